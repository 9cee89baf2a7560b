"""``model.cpu_fast_kernels``: on CPU devices the train step is compiled with the model's XLA:CPU
library fusions (``ModelSpec.cpu_fusions``; the eval step keeps XLA's default) and computes what
the default compilation computes, to float32 rounding.

The whole training engine (config field → programs → compiler) is checked on the small CNN; every
other architecture of the registry at the model level (loss and gradients of one batch, at a tiny
width): ResNet-18 by default, the others with fusions ``slow`` (compiling a deep network's
gradient takes 10-20 CPU-seconds).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax.compile_options import FAST_COMPILE, cpu_library_fusions
from asl_jax.losses import asymmetric_loss
from asl_jax.models import MODELS, cpu_compiler_options, create_model
from asl_jax.training import parallel
from asl_jax.training.config import validate_config
from asl_jax.training.programs import build_programs
from train.configs.default import get_config

NUM_CLASSES, BATCH, STEPS = 4, 4, 2
#: A width every family accepts (ViT's is split over its 12 heads).
WIDTH = 24
#: How XLA:CPU names a fusion run by its kernel library in the compiled HLO.
LIBRARY_FUSION = '"kind":"__ynn_fusion"'
#: The families checked in the default run: the cheapest with fusions (the others' gradients
#: take 10-20 CPU-seconds each), and ViT and the EfficientNets, which have none (nothing to
#: compile).
DEFAULT_RUN = ("resnet18", "vit_b16", "efficientnet_b0")


def _config(fast: bool):
    config = get_config()
    config.model.width = 8
    config.model.cpu_fast_kernels = fast
    config.data.image_size = 16
    config.batch_size = BATCH
    config.num_steps = STEPS
    config.learning_rate = 1e-3
    config.progress_bar = False
    return validate_config(config)


def _train(config, batches, mesh):
    """The losses of the steps, the eval probabilities of the initial state, and how many
    library fusions the compiled train and eval steps hold."""
    programs = build_programs(
        config, num_classes=NUM_CLASSES, image_size=16, total_steps=STEPS, mesh=mesh
    )
    state = programs.init(jax.random.key(0))
    sharded = [parallel.shard_batch(b, mesh) for b in batches]
    # Compiled once each, through the jit's own options; then called.
    train = programs.train.lower(state, sharded[0]).compile()
    evaluate = programs.eval.lower(state, sharded[0]).compile()
    fusions = sum(p.as_text().count(LIBRARY_FUSION) for p in (train, evaluate))
    # Evaluated at the initial weights: after a step, Adam turns rounding-sized differences of
    # near-zero gradients into learning-rate-sized ones.
    probs = np.asarray(jax.device_get(evaluate(state, sharded[0])["probs"]))
    losses = []
    for batch in sharded:
        state, metrics = train(state, batch)
        losses.append(float(metrics["loss"]))
    return np.array(losses), probs, fusions


def test_the_training_engine_compiles_with_the_cpu_options_and_computes_the_same():
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.integers(0, 256, (BATCH, 16, 16, 3), dtype=np.uint8),
            "labels": (rng.uniform(size=(BATCH, NUM_CLASSES)) < 0.5).astype(np.float32),
            "mask": np.ones(BATCH, bool),
        }
        for _ in range(STEPS)
    ]
    mesh = parallel.make_mesh(jax.devices()[:1])
    fast_losses, fast_probs, fast_fusions = _train(_config(True), batches, mesh)
    losses, probs, fusions = _train(_config(False), batches, mesh)
    np.testing.assert_allclose(fast_losses, losses, rtol=2e-5)
    np.testing.assert_allclose(fast_probs, probs, rtol=1e-5, atol=1e-6)
    # The options reach the compiler (XLA:CPU hands a few ops to the library by default).
    assert fast_fusions > fusions


def _cases() -> list:
    return [
        pytest.param(name, marks=[] if name in DEFAULT_RUN else [pytest.mark.slow])
        for name in MODELS
        if name != "cnn"  # the test above
    ]


@pytest.mark.parametrize("name", _cases())
def test_every_architecture_computes_the_same_loss_and_gradients(name):
    options = cpu_compiler_options(name)
    if not options:  # XLA's default compilation: the same program
        assert not MODELS[name].cpu_fusions
        return
    model = create_model(name, num_classes=NUM_CLASSES, width=WIDTH)
    rng = np.random.default_rng(0)
    # 64 px and 8 images: the last stage's batch norm averages over 32 values, not 4 (a variance
    # of 4 values amplifies rounding differences far beyond float32's).
    x = jnp.asarray(rng.uniform(size=(8, 64, 64, 3)).astype(np.float32))
    y = jnp.asarray((rng.uniform(size=(8, NUM_CLASSES)) < 0.5).astype(np.float32))
    init = jax.jit(lambda k: model.init(k, x[:1], train=False), compiler_options=FAST_COMPILE)
    variables = init(jax.random.key(0))

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return asymmetric_loss(logits, y).sum()

    # XLA's cheap code generation for both: the library fusions are chosen before it.
    results = [
        jax.jit(jax.value_and_grad(loss)).lower(variables["params"]).compile(o)(variables["params"])
        for o in (FAST_COMPILE, {**FAST_COMPILE, **options})
    ]
    (reference, grads), (fast, fast_grads) = results
    np.testing.assert_allclose(float(fast), float(reference), rtol=1e-5)
    flat, fast_flat = (
        jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (grads, fast_grads)
    )
    # A different summation order alone (the REDUCE kind by itself) moves TResNet-M's gradient
    # by 1e-2 of its norm at this size (its stem after space-to-depth amplifies it), the others'
    # by < 1e-5; a wrong kernel moves it by its own size.
    assert float(jnp.linalg.norm(fast_flat - flat) / jnp.linalg.norm(flat)) < 5e-2


def test_unknown_fusion_kinds_and_models_are_refused():
    with pytest.raises(ValueError, match="NOPE"):
        cpu_library_fusions(("NOPE",))
    with pytest.raises(ValueError, match=r"model\.name='nope'"):
        cpu_compiler_options("nope")
    assert cpu_library_fusions(()) == {}
