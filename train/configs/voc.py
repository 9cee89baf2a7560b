"""Pascal VOC 2007 (20 classes) through TFDS ``voc/2007``, ResNet-50 at 448 px.

python -m train --config=train/configs/voc.py --workdir=runs/voc
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.name = "voc"
    config.data.name = "voc2007"
    config.data.image_size = 448
    config.augment.randaugment = True
    config.model.name = "resnet50"
    config.model.width = 0
    config.batch_size = 32
    config.num_epochs = 40
    config.learning_rate = 1e-4
    config.ema_decay = 0.999
    config.loss.reduction = "sum"
    config.log_every = 50
    config.eval_every = 500
    config.checkpoint_every = 500
    return config
