"""MS-COCO multi-label (80 classes), the paper's main setting, fine-tuned on an accelerator.

    python -m train --config=train/configs/coco.py --workdir=runs/coco
    python -m train --config=train/configs/coco.py --config.model.pretrained=resnet50.pth ...

Needs the TFDS ``coco/2017`` dataset prepared under ``data.data_dir`` (see the guide
``docs/guides/own-data.md``): TFDS offers COCO 2017 (train2017, 118k images, and val2017, 5k, which
this config validates on), not the 2014 split of the paper's tables, so the numbers are close to but
not the paper's. The official fine-tuning recipe: ImageNet weights (here torchvision's ResNet-50,
downloaded by torchvision on first use; offline, give a weights file), 448 px images, Adam lr 1e-4,
one-cycle, weight decay 1e-4 on weights only, EMA 0.9997, batch 128, Cutout + RandAugment, loss
summed over the batch, mixed precision on GPU/TPU (``model.dtype='auto'``). The paper's own model,
TResNet-L, with timm's ImageNet weights (no input normalisation, as the official code)::

    python -m train --config=train/configs/coco.py --config.model.name=tresnet_l \
        --config.model.pretrained=timm:tresnet_l --workdir=runs/coco_tresnet_l

The classifier head is linear; ML-Decoder (``--config.model.head=ml_decoder``, 80 queries for
the 80 classes) is the head of the ML-Decoder paper's COCO results. A published TResNet +
ML-Decoder checkpoint (official or timm names) loads with its head::

    python -m train --config=train/configs/coco.py --config.model.name=tresnet_l \
        --config.model.head=ml_decoder --config.model.pretrained=tresnet_l_ml_decoder.pth ...
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.name = "coco"
    config.data.name = "coco2017"
    config.data.image_size = 448
    config.augment.randaugment = True
    default.fine_tuning(config, model="resnet50", pretrained="torchvision:resnet50")
    config.model.head = "linear"  # or "ml_decoder"
    config.batch_size = 128
    config.num_epochs = 40
    config.loss.reduction = "sum"
    config.log_every = 100
    config.eval_every = 2000
    config.checkpoint_every = 1000
    config.max_checkpoints_to_keep = 3
    return config
