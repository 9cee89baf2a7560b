"""Pascal VOC 2007 (20 classes) through TFDS ``voc/2007``: ResNet-50 at 448 px, fine-tuned.

    python -m train --config=train/configs/voc.py --workdir=runs/voc

The official fine-tuning recipe (see ``coco.py``) from torchvision's ImageNet ResNet-50 (a new
20-class head); VOC's trainval is small, so a shorter EMA (0.999) and batch 32.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.name = "voc"
    config.data.name = "voc2007"
    config.data.image_size = 448
    config.augment.randaugment = True
    default.fine_tuning(
        config, model="resnet50", pretrained="torchvision:resnet50", ema_decay=0.999
    )
    config.batch_size = 32
    config.num_epochs = 40
    config.loss.reduction = "sum"
    config.log_every = 50
    config.eval_every = 500
    config.checkpoint_every = 500
    return config
