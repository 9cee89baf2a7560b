"""What the train-step benchmarks share: loss configs, model sizes, config and batch helpers.

Used by `benchmarks.train_step_time`, `benchmarks.train_throughput` and
`benchmarks.train_scaling`; `benchmarks.train_step` is their command line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from asl_jax.training.config import Config

ROOT = Path(__file__).resolve().parents[1]
# The train step's learning-rate schedule needs a length; it does not change the step's cost.
TOTAL_STEPS = 10_000
# `--tiny` (the smoke test) compiles with the package's FAST_COMPILE options (without XLA's
# expensive CPU optimisations), which shortens nearly all of a tiny run. Timed runs never use it.

# Loss configurations (overrides of the config's `loss` block), in table order; ratios are to BCE.
BCE = "BCE"
ASL_STATIC = "ASL, static γ"
ASL_ADAPTIVE = "ASL, adaptive γ−"
ASL_DETACHED = "ASL, detached weights"
FOCAL = "focal (γ = 2)"
_ASL = {"name": "asl", "gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05}
LOSS_SETTINGS: dict[str, dict[str, Any]] = {
    BCE: {"name": "bce"},
    ASL_STATIC: dict(_ASL),
    ASL_ADAPTIVE: {**_ASL, "adaptive": True},
    ASL_DETACHED: {**_ASL, "detach_focal_weight": True},
    FOCAL: {"name": "focal", "focal_gamma": 2.0},
}
LOSS_KEYS = {
    "bce": BCE,
    "asl": ASL_STATIC,
    "asl_adaptive": ASL_ADAPTIVE,
    "asl_detached": ASL_DETACHED,
    "focal": FOCAL,
}
# Step-breakdown candidates (cumulative programs; CNN only by default) and the loss alone.
PART_AUGMENT = "augmentation"
PART_FORWARD = "augmentation + forward"
PART_BACKWARD = "augmentation + forward + backward"
LOSS_ALONE_ASL = "loss alone: ASL value and grad"
LOSS_ALONE_BCE = "loss alone: BCE value and grad"
_PARTS = (PART_AUGMENT, PART_FORWARD, PART_BACKWARD)
_LOSS_ALONE = (LOSS_ALONE_ASL, LOSS_ALONE_BCE)


@dataclasses.dataclass(frozen=True)
class BenchModel:
    """A model and the input sizes it is benchmarked at."""

    key: str
    label: str
    model: str
    width: int  # config.model.width (0 = the model's default)
    image_size: int
    batch_size: int
    num_train: int  # shapes images generated for it (the default config's 8192 for the CNN)
    num_val: int
    breakdown: bool  # also time the parts of the step


BENCH_MODELS: dict[str, BenchModel] = {
    "cnn": BenchModel("cnn", "small CNN (default config)", "cnn", 16, 32, 64, 8192, 2048, True),
    "resnet18": BenchModel("resnet18", "ResNet-18", "resnet18", 0, 64, 32, 512, 64, False),
}
# Tiny sizes for the smoke test (`--tiny`): the same code paths in seconds.
TINY_BENCH_MODELS: dict[str, BenchModel] = {
    "cnn": BenchModel("cnn", "small CNN (tiny)", "cnn", 4, 16, 8, 64, 8, True),
    "resnet18": BenchModel("resnet18", "ResNet-18 (tiny)", "resnet18", 4, 16, 8, 32, 8, False),
}


def make_config(spec: BenchModel, loss: dict[str, Any], *, cache_dir: str = "") -> Config:
    """The default config with `spec`'s model and sizes and the `loss` settings."""
    config = Config()
    return dataclasses.replace(
        config,
        batch_size=spec.batch_size,
        progress_bar=False,
        model=dataclasses.replace(config.model, name=spec.model, width=spec.width),
        data=dataclasses.replace(
            config.data,
            image_size=spec.image_size,
            num_train=spec.num_train,
            num_val=spec.num_val,
            cache_dir=cache_dir,
        ),
        loss=dataclasses.replace(config.loss, **loss),
    )


def _single_device_mesh() -> jax.sharding.Mesh:
    from asl_jax.training import make_mesh

    # The test suite runs with 8 simulated CPU devices: a 1-device mesh must be explicit.
    return make_mesh(jax.devices()[:1])


def programs_for(config: Config, source: Any, spec: Any, mesh: Any) -> Any:
    """The package's compiled programs of `config` (what training runs) on `mesh`."""
    from asl_jax.training import build_programs

    return build_programs(
        config,
        num_classes=source.num_classes,
        image_size=spec.image_size,
        total_steps=TOTAL_STEPS,
        mesh=mesh,
    )


def _take_batches(source: Any, config: Config, count: int, *, epoch: int = 0) -> list[dict]:
    """The first `count` training batches of `config` (host NumPy), cycling over epochs."""
    from asl_jax.data import BatchRequest

    out: list[dict] = []
    while len(out) < count:
        request = BatchRequest.training(batch_size=config.batch_size, seed=config.seed, epoch=epoch)
        for batch in source.batches(request):
            out.append(batch)
            if len(out) == count:
                break
        epoch += 1
    return out


def _compile_train(
    programs: Any, state: Any, batch: dict, options: dict | None
) -> tuple[Callable, Any]:
    """Compiles ``programs.train`` for these shapes; returns (what to call, the executable).

    Without options the call goes through ``programs.train`` itself (the ahead-of-time
    compilation fills its cache); with options through the executable compiled with them.
    """
    compiled = programs.train.lower(state, batch).compile(options)
    return (compiled if options else programs.train), compiled


_FUSION = re.compile(r"=\s*\S+\s+fusion\(")


def _program_stats(compiled: Any) -> tuple[int | None, float | None]:
    """(fusions in the entry computation, XLA's temporary bytes) of a compiled program."""
    try:
        text = compiled.as_text()
        entry = text[text.index("ENTRY") :]
        fusions = len(_FUSION.findall(entry))
    except (ValueError, AttributeError):
        fusions = None
    try:
        temp = float(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # not every backend implements it
        temp = None
    return fusions, temp


def _flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    flops = cost.get("flops") if cost else None
    return float(flops) if flops else None


class _Stepper:
    """Calls a jitted train step on its own state, threaded through (the step donates it)."""

    def __init__(self, train: Callable, state: Any, batches: Sequence[dict]) -> None:
        self.train, self.state, self.batches, self.calls = train, state, batches, 0

    def __call__(self) -> None:
        batch = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        self.state, metrics = self.train(self.state, batch)
        jax.block_until_ready((self.state, metrics))


def _specs(args: Any) -> dict[str, BenchModel]:
    """The model specs of a command line (`args.tiny`, `args.num_train`)."""
    specs = TINY_BENCH_MODELS if args.tiny else BENCH_MODELS
    if args.num_train:
        n = args.num_train
        specs = {
            k: dataclasses.replace(s, num_train=n, num_val=max(8, n // 8)) for k, s in specs.items()
        }
    return specs


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    size = abs(ms)
    if size >= 100:
        return f"{ms:.0f}"
    if size >= 10:
        return f"{ms:.1f}"
    if size >= 0.1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"
