"""Your own photos, fine-tuned from ImageNet: a directory with ``train.csv`` and ``val.csv``.

    python -m train --config=train/configs/folder_finetune.py --config.data.path=my_photos \
        --workdir=runs/my_photos
    python -m train --config=train/configs/folder_finetune.py --config.data.path=my_photos \
        --config.model.pretrained=resnet50-11ad3fa6.pth --workdir=runs/my_photos   # offline

torchvision's ImageNet ResNet-50 (downloaded by torchvision on first use; offline, give the
``.pth`` / ``.safetensors`` file) with a new head for your classes, at 224 px, with the official
fine-tuning recipe: Adam lr 1e-4, one-cycle, weight decay 1e-4 on weights only, mixed precision on
GPU/TPU. The classifier head is linear; ``--config.model.head=ml_decoder`` puts the ML-Decoder
head on the last feature map instead (on a CPU, ``folder_finetune_lite.py`` is the smaller
recipe). A few hundred photos give few steps per epoch, so the EMA is shorter (0.999) than the
official 0.9997 and the run longer (30 epochs). A GPU-sized run; on a CPU it is slow but works.
"""

from train.configs import default, folder


def get_config():
    config = folder.get_config()
    config.name = "folder_finetune"
    config.data.image_size = 224
    default.fine_tuning(
        config, model="resnet50", pretrained="torchvision:resnet50", ema_decay=0.999
    )
    config.model.head = "linear"  # or "ml_decoder"
    config.batch_size = 32
    config.num_epochs = 30
    config.log_every = 20
    config.checkpoint_every = 200
    return config
