"""Tests of asl_jax.training.config: every invalid value is named before anything trains."""

import importlib
import re

import pytest

from asl_jax.training.config import (
    FIELDS,
    ConfigError,
    changed_result_fields,
    flatten,
    validate_config,
)

CONFIG_MODULES = ["default", "coco", "voc", "folder"]


def _config(module="default"):
    return importlib.import_module(f"train.configs.{module}").get_config()


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_shipped_configs_define_exactly_the_known_fields(module):
    config = _config(module)
    assert set(flatten(config)) == set(FIELDS)
    if module != "folder":  # folder needs a real data.path
        validate_config(config, num_devices=8)


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    with node.ignore_type():
        node[leaf] = value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("loss.name", "nope", "loss.name='nope': expected one of bce, focal, asl"),
        ("loss.reduction", "avg", "loss.reduction='avg': expected one of sum, batchmean, mean"),
        ("loss.gamma_neg", -1.0, "loss.gamma_neg=-1.0: expected a number in [0.0, inf)"),
        ("loss.gamma_pos", float("nan"), "loss.gamma_pos=nan"),
        ("loss.clip", 1.0, "loss.clip=1.0: expected a number in [0.0, 1.0)"),
        ("loss.detach_focal_weight", "yes", "loss.detach_focal_weight='yes': expected True or"),
        ("loss.adaptive_step_size", 0.0, "loss.adaptive_step_size=0.0"),
        ("model.name", "vgg", "model.name='vgg': expected one of cnn, resnet18"),
        ("model.dtype", "int8", "model.dtype='int8'"),
        ("optimizer", "sgd", "optimizer='sgd': expected one of adam, adamw"),
        ("schedule", "step", "schedule='step'"),
        ("batch_size", 0, "batch_size=0: expected an integer >= 1"),
        ("batch_size", 12, "batch_size=12: expected a multiple of the device count (8)"),
        ("eval_batch_size", 4, "eval_batch_size=4: expected a multiple of the device count"),
        ("num_steps", -5, "num_steps=-5"),
        ("learning_rate", 0.0, "learning_rate=0.0"),
        ("ema_decay", 1.0, "ema_decay=1.0: expected a number in [0.0, 1.0)"),
        ("warmup_fraction", 1.5, "warmup_fraction=1.5"),
        ("log_every", 0, "log_every=0: expected an integer >= 1"),
        ("threshold", 0.0, "threshold=0.0"),
        ("max_consecutive_nonfinite", 0, "max_consecutive_nonfinite=0"),
        ("progress_bar", 1, "progress_bar=1: expected True or False"),
        ("data.name", "imagenet", "data.name must be one of"),
        ("data.image_size", 4, "data.image_size must be an int >= 8"),
        ("augment.cutout", 2.0, "augment.cutout must be a probability"),
    ],
)
def test_invalid_values_name_the_field(field, value, message):
    config = _config()
    _set(config, field, value)
    with pytest.raises(ConfigError) as info:
        validate_config(config, num_devices=8)
    assert message in str(info.value)


def test_num_epochs_zero_needs_num_steps():
    config = _config()
    config.num_epochs = 0
    with pytest.raises(
        ConfigError, match=re.escape("num_epochs=0: expected an integer >= 1 when num_steps")
    ):
        validate_config(config)
    config.num_steps = 10
    validate_config(config)


def test_adaptive_needs_asl_and_a_start_value_within_bounds():
    config = _config()
    config.loss.adaptive = True
    config.loss.name = "focal"
    with pytest.raises(ConfigError, match=re.escape("loss.adaptive=True needs loss.name='asl'")):
        validate_config(config)
    config.loss.name = "asl"
    config.loss.gamma_neg = config.loss.adaptive_max_gamma_neg + 1.0
    with pytest.raises(
        ConfigError, match=re.escape("loss.gamma_neg=9.0: expected a start value within")
    ):
        validate_config(config)


def test_unknown_fields_in_a_config_file_are_rejected():
    config = _config()
    config.loss.gama_neg = 2.0  # a typo in a config file
    with pytest.raises(ConfigError, match=r"unknown config field.*loss\.gama_neg"):
        validate_config(config)


def test_batch_size_must_divide_over_processes():
    config = _config()
    config.batch_size = 66
    with pytest.raises(ConfigError, match="a multiple of the process count"):
        validate_config(config, num_devices=2, process_count=4)


def test_changed_result_fields_ignores_operational_fields():
    old = _config().to_dict()
    new = _config()
    new.log_every = 7
    new.checkpoint_every = 3
    new.data.cache_dir = "/elsewhere"
    assert changed_result_fields(old, new.to_dict()) == []
    new.loss.gamma_neg = 2.0
    new.num_steps = 100
    assert changed_result_fields(old, new.to_dict()) == [
        "loss.gamma_neg: 4.0 -> 2.0",
        "num_steps: 0 -> 100",
    ]
