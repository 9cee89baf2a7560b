"""MS-COCO 2014/2017 multi-label (80 classes), the paper's main setting, on an accelerator.

    python -m train --config=train/configs/coco.py --workdir=runs/coco

Needs the TFDS ``coco/2017`` dataset prepared under ``data.data_dir`` (see the README). The
official recipe: 448 px images, Adam lr 1e-4, one-cycle, weight decay 1e-4, EMA 0.9997, batch 128,
Cutout + RandAugment, loss summed over the batch. The backbone here is a ResNet-50 (the paper's
TResNet-L is not part of this package).
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.name = "coco"
    config.data.name = "coco2017"
    config.data.image_size = 448
    config.augment.randaugment = True
    config.model.name = "resnet50"
    config.model.width = 0
    config.batch_size = 128
    config.num_epochs = 40
    config.learning_rate = 1e-4
    config.ema_decay = 0.9997
    config.loss.reduction = "sum"
    config.log_every = 100
    config.eval_every = 2000
    config.checkpoint_every = 1000
    config.max_checkpoints_to_keep = 3
    return config
