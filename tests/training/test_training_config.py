"""Tests of asl_jax.training.config: every invalid value is named before anything trains."""

import importlib
import pathlib
import re

import pytest

from asl_jax.config_fields import Effect, flat_mapping
from asl_jax.training.config import (
    AUTO_EVALUATIONS,
    Config,
    ConfigError,
    changed_result_fields,
    eval_interval,
    fit_batch_size,
    validate_config,
)
from asl_jax.training.loop import itstime


def _config(module="default"):
    return importlib.import_module(f"train.configs.{module}").get_config()


# Every config file that ships; the folder ones need a real data.path to pass the checks.
CONFIG_MODULES = sorted(
    p.stem
    for p in (pathlib.Path(__file__).parents[2] / "train" / "configs").glob("*.py")
    if p.stem != "__init__"
)
FOLDER_MODULES = tuple(m for m in CONFIG_MODULES if _config(m).data.name == "folder")


def test_config_modules_are_found():
    assert {"default", "coco", "voc", "folder", "folder_cpu", "folder_finetune"} <= set(
        CONFIG_MODULES
    )


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_shipped_configs_define_exactly_the_known_fields(module):
    config = _config(module)
    assert set(flat_mapping(config)) == set(Config().flat())
    if module not in FOLDER_MODULES:
        validate_config(config, num_devices=8)


@pytest.mark.parametrize("module", FOLDER_MODULES)
def test_folder_configs_pass_the_checks_with_a_data_path(module, tmp_path):
    for name in ("train.csv", "val.csv"):
        (tmp_path / name).write_text("image,labels\n")
    config = _config(module)
    config.data.path = str(tmp_path)
    validate_config(config, num_devices=8)
    assert config.data.name == "folder" and config.eval_every == -1


def test_cpu_recipe_is_small():
    """The CPU recipe is the small CNN at a small image size (minutes, not hours, on a CPU)."""
    config = _config("folder_cpu")
    assert (config.model.name, config.model.width) == ("cnn", 16)
    assert config.data.image_size <= 96 and config.batch_size <= 32


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
        ("loss.pos_weight", 0.0, "loss.pos_weight=0.0: expected a number in (0.0, inf)"),
        (
            "loss.class_weights",
            "1,x",
            "loss.class_weights='1,x': expected '', 'inverse_frequency' or one number per class",
        ),
        ("loss.class_weights", "1,-1", "weights must be finite and >= 0"),
        ("loss.class_weights", 3, "loss.class_weights=3: expected a string"),
        ("loss.detach_focal_weight", "yes", "loss.detach_focal_weight='yes': expected True or"),
        ("loss.adaptive_step_size", 0.0, "loss.adaptive_step_size=0.0"),
        ("model.name", "vgg", "model.name='vgg': expected one of cnn, resnet18"),
        ("model.dtype", "int8", "model.dtype='int8'"),
        ("model.normalization", "imagent", "model.normalization='imagent': expected one of auto"),
        ("model.pretrained", 3, "model.pretrained=3: expected a string"),
        ("model.pretrained", "timm:", "model.pretrained='timm:': expected a model name after"),
        ("model.pretrained", "w.pth", "model.pretrained='w.pth' needs a model that can start"),
        ("model.freeze_backbone_steps", -1, "model.freeze_backbone_steps=-1: expected an integ"),
        ("model.freeze_backbone_steps", 5, "model.freeze_backbone_steps=5: expected 0 for model"),
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
        ("eval_every", -2, "eval_every=-2: expected an integer >= -1"),
        ("threshold", 0.0, "threshold=0.0"),
        ("max_consecutive_nonfinite", 0, "max_consecutive_nonfinite=0"),
        ("progress_bar", 1, "progress_bar=1: expected True or False"),
        ("tensorboard", "yes", "tensorboard='yes': expected True or False"),
        ("profile_steps", -1, "profile_steps=-1: expected an integer >= 0"),
        ("data.name", "imagenet", "data.name='imagenet': expected one of shapes, folder"),
        ("data.image_size", 4, "data.image_size=4: expected an integer >= 8"),
        ("augment.cutout", 2.0, "augment.cutout=2.0: expected a number in [0.0, 1.0]"),
    ],
)
def test_invalid_values_name_the_field(field, value, message):
    config = _config()
    _set(config, field, value)
    with pytest.raises(ConfigError) as info:
        validate_config(config, num_devices=8)
    assert message in str(info.value)


def test_pretrained_weights_need_the_models_own_width():
    config = _config()
    config.model.name, config.model.pretrained = "resnet50", "torchvision:resnet50"
    with pytest.raises(ConfigError, match=re.escape("model.width=16: expected 0 (the model's")):
        validate_config(config)
    config.model.width = 0
    validate_config(config)


@pytest.mark.parametrize("module", ["coco", "voc", "folder_finetune"])
def test_fine_tuning_recipes_are_the_official_one(module):
    config = _config(module)
    assert config.model.pretrained == "torchvision:resnet50" and config.model.width == 0
    assert (config.optimizer, config.schedule, config.learning_rate) == ("adam", "onecycle", 1e-4)
    assert config.weight_decay == 1e-4 and config.model.dtype == "auto"


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


def _evaluated_steps(eval_every, total):
    every = eval_interval(eval_every, total)
    return [step for step in range(1, total + 1) if itstime(step, every, total)]


@pytest.mark.parametrize("total", [1, 3, 8, 10, 100, 256, 1024, 1030, 30000])
def test_auto_eval_cadence_gives_a_curve(total):
    steps = _evaluated_steps(-1, total)
    assert len(steps) >= min(total, AUTO_EVALUATIONS)
    assert steps[-1] == total
    # Not much more than asked: evaluations cost time.
    assert len(steps) <= AUTO_EVALUATIONS + 1 or total < 2 * AUTO_EVALUATIONS


@pytest.mark.parametrize(
    ("eval_every", "total", "expected"),
    [
        (0, 1024, [1024]),  # 0 = only at the end
        (256, 1024, [256, 512, 768, 1024]),  # an explicit value is honoured ...
        (256, 256, [256]),  # ... even when it gives one evaluation
        (300, 1000, [300, 600, 900, 1000]),
        (1, 3, [1, 2, 3]),
        (-1, 1024, [128 * i for i in range(1, 9)]),
        (-1, 5, [1, 2, 3, 4, 5]),
    ],
)
def test_eval_steps(eval_every, total, expected):
    assert _evaluated_steps(eval_every, total) == expected


@pytest.mark.parametrize(
    ("batch_size", "num_examples", "multiple", "expected"),
    [
        (64, 1000, 1, 64),  # fits: unchanged
        (64, 64, 8, 64),
        (64, 48, 1, 48),  # the whole split
        (64, 50, 8, 48),  # the largest multiple of the device count that fits
        (64, 9, 8, 8),
        (64, 1, 1, 1),
    ],
)
def test_fit_batch_size(batch_size, num_examples, multiple, expected):
    assert fit_batch_size(batch_size, num_examples, multiple=multiple) == expected


def test_fit_batch_size_with_fewer_examples_than_devices():
    with pytest.raises(
        ConfigError,
        match=r"batch_size=64: the train split has 5 example\(s\), fewer than the 8 devices",
    ):
        fit_batch_size(64, 5, multiple=8)


def test_fields_added_after_a_run_count_as_their_defaults():
    old = _config().to_dict()
    del old["loss"]["class_weights"], old["loss"]["pos_weight"]
    new = _config()
    assert changed_result_fields(old, new.to_dict()) == []
    new.loss.pos_weight = 2.0
    assert changed_result_fields(old, new.to_dict()) == ["loss.pos_weight: 1.0 -> 2.0"]


# Every field, whatever block declares it: a field added to the config is covered by the tests
# below without editing them.
ALL_FIELDS = dict(Config.walk())


def _other_value(field):
    """A value of ``field`` other than its default (the new config is compared unchecked)."""
    default = field.default
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2 if default else 0.5
    return f"{default}-changed"


def _nested(flat):
    out = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


@pytest.mark.parametrize("name", sorted(ALL_FIELDS))
def test_every_field_is_described_with_an_effect(name):
    field = ALL_FIELDS[name]
    assert field.metadata["doc"].strip() and "|" not in field.metadata["doc"], name
    assert isinstance(field.metadata["effect"], Effect)


@pytest.mark.parametrize("name", sorted(ALL_FIELDS))
def test_a_change_refuses_the_workdir_exactly_for_result_fields(name):
    old = Config().to_dict()
    new = Config().flat()
    new[name] = _other_value(ALL_FIELDS[name])
    changed = changed_result_fields(old, _nested(new))
    expected = ALL_FIELDS[name].metadata["effect"].changes_result
    assert changed == ([f"{name}: {Config().flat()[name]!r} -> {new[name]!r}"] if expected else [])


@pytest.mark.parametrize("name", sorted(ALL_FIELDS))
def test_a_stored_config_without_a_field_resumes(name):
    """A config.json written before a field existed reads as a run of its default (or of what
    it meant then) and is not refused by a config that has the default."""
    stored = Config().flat()
    del stored[name]
    restored = Config.from_mapping(_nested(stored), stored=True)
    field, block = ALL_FIELDS[name], name.rpartition(".")[0]
    absent = field.metadata["absent"]
    block_values = _nested(stored).get(block, {}) if block else _nested(stored)
    assert restored.flat()[name] == (absent(block_values) if absent else field.default)
    assert changed_result_fields(_nested(stored), restored) == []
