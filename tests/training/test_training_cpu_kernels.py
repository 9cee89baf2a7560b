"""``model.cpu_fast_kernels``: on CPU devices the train / eval steps are compiled with the model's
XLA:CPU library fusions (``ModelSpec.cpu_fusions``), and compute what the default compilation
computes, to float32 rounding, for every architecture of the registry.

Each architecture runs a few training steps at a tiny width and size, once with the option and
once without. The first architecture of each family (each model class of the registry) runs by
default; the deeper variants of a family repeat the same layers and are ``slow``.
"""

import jax
import numpy as np
import pytest

from asl_jax.models import MODELS, cpu_compiler_options
from asl_jax.training import parallel
from asl_jax.training.config import validate_config
from asl_jax.training.programs import build_programs
from train.configs.default import get_config

NUM_CLASSES, BATCH, STEPS = 4, 4, 2
#: How XLA:CPU names a fusion run by its kernel library in the compiled HLO.
LIBRARY_FUSION = '"kind":"__ynn_fusion"'
#: A width every family accepts (ViT's is split over its 12 heads).
WIDTH = 24
#: TResNet needs sides that are multiples of 4, ViT of 16, the ResNets' stride is 32.
IMAGE_SIZE = 32


def _family(name: str) -> object:
    """The class (or factory) that builds model ``name``: what its layers are."""
    build = MODELS[name].build
    return getattr(build, "func", build)


def _cases() -> list:
    seen, cases = set(), []
    for name in MODELS:
        family = _family(name)
        marks = [pytest.mark.slow] if family in seen else []
        seen.add(family)
        cases.append(pytest.param(name, marks=marks))
    return cases


def _config(name: str, fast: bool):
    config = get_config()
    config.model.name = name
    config.model.width = WIDTH
    config.model.cpu_fast_kernels = fast
    config.data.image_size = IMAGE_SIZE
    config.batch_size = BATCH
    config.num_steps = STEPS
    config.learning_rate = 1e-3
    config.progress_bar = False
    return validate_config(config)


def _batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.integers(0, 256, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
            "labels": (rng.uniform(size=(BATCH, NUM_CLASSES)) < 0.5).astype(np.float32),
            "mask": np.ones(BATCH, bool),
        }
        for _ in range(STEPS)
    ]


def _train(config, batches, mesh):
    """The losses of the steps, the eval probabilities of the initial state, and how many
    library fusions the compiled train and eval steps hold."""
    programs = build_programs(
        config, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, total_steps=STEPS, mesh=mesh
    )
    state = programs.init(jax.random.key(0))
    sharded = [parallel.shard_batch(b, mesh) for b in batches]
    # Compiled once each, through the jit's own options; then called.
    train = programs.train.lower(state, sharded[0]).compile()
    evaluate = programs.eval.lower(state, sharded[0]).compile()
    fusions = sum(p.as_text().count(LIBRARY_FUSION) for p in (train, evaluate))
    # Evaluated at the initial weights: after a step, Adam turns rounding-sized differences of
    # near-zero gradients into learning-rate-sized ones, which the eval forward would amplify.
    probs = np.asarray(jax.device_get(evaluate(state, sharded[0])["probs"]))
    losses = []
    for batch in sharded:
        state, metrics = train(state, batch)
        losses.append(float(metrics["loss"]))
    return np.array(losses), probs, fusions


@pytest.mark.parametrize("name", _cases())
def test_cpu_fast_kernels_compute_what_the_default_compilation_computes(name):
    mesh = parallel.make_mesh(jax.devices()[:1])
    batches = _batches()
    fast_losses, fast_probs, fast_fusions = _train(_config(name, True), batches, mesh)
    losses, probs, fusions = _train(_config(name, False), batches, mesh)
    np.testing.assert_allclose(fast_losses, losses, rtol=2e-5)
    np.testing.assert_allclose(fast_probs, probs, rtol=1e-5, atol=1e-6)
    # The options reach the compiler: more library fusions exactly where the model asks for them
    # (XLA:CPU fuses a few by default).
    assert (fast_fusions > fusions) == bool(MODELS[name].cpu_fusions)


def test_unknown_fusion_kinds_and_models_are_refused():
    from asl_jax.compile_options import cpu_library_fusions

    with pytest.raises(ValueError, match="NOPE"):
        cpu_library_fusions(("NOPE",))
    with pytest.raises(ValueError, match=r"model\.name='nope'"):
        cpu_compiler_options("nope")
    assert cpu_library_fusions(()) == {}
