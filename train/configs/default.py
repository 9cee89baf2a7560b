"""Default config: ASL on the embedded ``shapes`` data, a small CNN, minutes on a CPU.

The CNN is kept narrow (``model.width=16``) on purpose: wider models reach nearly 100% mAP on
this data, which leaves no room to see the losses differ. Time and results: README, "Quick start".

    python -m train                                         # this config
    python -m train --config.loss.name=bce --workdir=runs/bce
    python -m train --config.loss.adaptive=True --workdir=runs/adaptive

Every field is described in ``asl_jax.training.config.FIELDS`` (and the README).
"""

import dataclasses

import ml_collections

from asl_jax.data.augment import AugmentConfig
from asl_jax.training.step import LossConfig


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "default"
    config.seed = 0

    # Loss and augmentation defaults live in their dataclasses (the paper's COCO setting: ASL
    # with γ+ = 0, γ− = 4, m = 0.05, batchmean reduction, adaptive γ− off).
    config.loss = ml_collections.ConfigDict(dataclasses.asdict(LossConfig()))

    config.model = ml_collections.ConfigDict()
    config.model.name = "cnn"  # one of asl_jax.models.MODEL_NAMES
    config.model.width = 16  # channels of the first stage (0 = the model's default)
    config.model.dtype = "auto"  # auto = bfloat16 on GPU/TPU, float32 on CPU
    # "" = from scratch | a .pth/.pt/.safetensors file | "torchvision:<name>" | "timm:<name>"
    config.model.pretrained = ""
    config.model.normalization = "auto"  # auto = what the weights expect (resolved at start)
    config.model.freeze_backbone_steps = 0  # > 0: only the classifier head trains at first

    config.data = ml_collections.ConfigDict()
    config.data.name = "shapes"  # shapes | folder | voc2007 | coco2017
    config.data.path = ""  # folder: directory with train.csv / val.csv
    config.data.data_dir = ""  # tfds: where prepared datasets live ("" = TFDS default)
    config.data.image_size = 32
    config.data.num_train = 8192  # shapes only
    config.data.num_val = 2048  # shapes only
    config.data.drop_positive_fraction = 0.0  # shapes: missing positive train labels
    config.data.cache_dir = ""  # shapes: "" = ~/.cache/asl_jax
    config.data.skip_bad_rows = False  # folder
    config.data.allow_unknown_val_labels = False  # folder
    config.data.voc_use_difficult = True  # voc2007
    config.data.num_workers = 0  # folder streaming: decoding processes (0 = in-process)

    config.augment = ml_collections.ConfigDict(dataclasses.asdict(AugmentConfig()))

    config.batch_size = 64  # global
    config.eval_batch_size = 0  # 0 = batch_size
    config.num_epochs = 8
    config.num_steps = 0  # > 0 wins over num_epochs

    # The official recipe: Adam, one-cycle with 20% warm-up, weight decay on kernels only.
    config.optimizer = "adam"
    config.learning_rate = 3e-3
    config.schedule = "onecycle"
    config.warmup_fraction = 0.2
    config.weight_decay = 1e-4
    config.grad_clip_norm = 0.0  # 0 = no clipping
    # The official 0.9997 averages over ~3000 steps; this run has 1024.
    config.ema_decay = 0.99

    config.log_every = 20
    config.eval_every = -1  # -1 = auto: at least 8 evaluations (every total steps // 8)
    config.checkpoint_every = 256
    config.max_checkpoints_to_keep = 2
    config.async_checkpoints = True  # write checkpoints in the background
    config.max_consecutive_nonfinite = 20
    config.threshold = 0.5
    config.progress_bar = True
    config.tensorboard = True  # event files in the workdir: tensorboard --logdir runs/
    config.profile_steps = 0  # > 0: a jax.profiler trace of that many steps in WORKDIR/profile
    return config


def fine_tuning(
    config: ml_collections.ConfigDict,
    *,
    model: str,
    pretrained: str,
    ema_decay: float = 0.9997,
) -> ml_collections.ConfigDict:
    """Sets the official fine-tuning recipe on ``config`` (the recipes call it) and returns it.

    Pretrained weights (``pretrained``, see ``model.pretrained``) for ``model`` at its standard
    width with the input normalisation the weights expect; Adam at lr 1e-4 with the one-cycle
    schedule, weight decay 1e-4 on weights only, an EMA of the weights (the official 0.9997;
    recipes on small datasets pass a shorter one) and mixed precision on GPU/TPU.
    """
    config.model.name = model
    config.model.width = 0
    config.model.pretrained = pretrained
    config.model.normalization = "auto"
    config.model.dtype = "auto"
    config.optimizer = "adam"
    config.schedule = "onecycle"
    config.learning_rate = 1e-4
    config.weight_decay = 1e-4
    config.ema_decay = ema_decay
    return config
