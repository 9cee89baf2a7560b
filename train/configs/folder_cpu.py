"""Your own photos on a CPU: a small CNN at 64 px that trains in minutes on 50–500 images.

    python -m train --config=train/configs/folder_cpu.py --config.data.path=my_photos \
        --workdir=runs/my_photos

The ``folder`` data (a directory with ``train.csv`` and ``val.csv``, the guide "Train on your own
data", ``docs/guides/own-data.md``), the width-16 CNN of the default config (``model.width=16``: 16,
32 and 64 channels in its three stages; ``model.width=0`` would mean the CNN's own default, 32:
twice as wide, about 4x the compute), images squish-resized to 64 px, 40 epochs of batch 16 (a small
batch gives a small dataset more updates per epoch; a train split of fewer than 16 images trains
with a smaller batch, with a warning), 8 evaluations (``eval_every=-1``). Time and results: that
guide, "Your own photos on a CPU". The model starts from random weights: it learns simple,
consistent visual cues (colours, shapes), not what a pretrained network knows about real photos.
"""

from train.configs import folder


def get_config():
    config = folder.get_config()
    config.name = "folder_cpu"
    config.data.image_size = 64
    config.model.name = "cnn"
    config.model.width = 16
    config.batch_size = 16
    config.num_epochs = 40
    config.learning_rate = 3e-3
    config.ema_decay = 0.99  # averages over ~100 steps; a 200-image run has 400
    config.log_every = 10
    config.checkpoint_every = 100
    return config
