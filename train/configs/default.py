"""Default config: ASL on the embedded ``shapes`` data, a small CNN, minutes on a CPU.

The defaults of every field are declared once, with their checks and meanings, in the typed
config (``asl_jax.training.config.Config``; ``python -m asl_jax.training.config`` prints the
table); this file is those defaults as the ``ml_collections`` config that the command line
overrides. The CNN is kept narrow (``model.width=16``) on purpose: wider models reach nearly
100% mAP on this data, which leaves no room to see the losses differ.

    python -m train                                         # this config
    python -m train --config.loss.name=bce --workdir=runs/bce
    python -m train --config.loss.adaptive=True --workdir=runs/adaptive
"""

import ml_collections

from asl_jax.training.config import default_config_dict


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(default_config_dict())


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
