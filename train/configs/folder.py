"""Your own images: a directory with ``train.csv`` and ``val.csv`` (rows ``image,labels``).

    python -m train --config=train/configs/folder.py --config.data.path=/data/planet \
        --workdir=runs/planet

A ResNet-18 at 224 px trained from scratch for 30 epochs: a GPU-sized recipe for thousands of
images (``model.width=0`` = the ResNet's own width, 64 channels in the first stage; pretrained
backbones: ``folder_finetune.py``). On a CPU, or with a few hundred images, start from
``train/configs/folder_cpu.py``. A train split smaller than ``batch_size`` trains with a smaller
batch (with a warning); adjust ``model.name``, ``data.image_size``, ``batch_size`` and
``num_epochs`` to your data and hardware.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.name = "folder"
    config.data.name = "folder"
    config.data.image_size = 224
    config.model.name = "resnet18"
    config.model.width = 0  # 0 = the model's default width: 64 for the ResNets (32 for cnn)
    config.batch_size = 64
    config.num_epochs = 30
    config.learning_rate = 3e-4
    config.ema_decay = 0.999
    config.log_every = 50
    config.eval_every = -1  # auto: at least 8 evaluations over the run
    config.checkpoint_every = 500
    return config
