"""Models: JAX (jit) against PyTorch (eager and torch.compile) on the same weights, on CPU.

For each model (ResNet-50, TResNet-M and ViT-B/16 by default; any model of
`asl_jax.models.pretrained_model_names()`), a PyTorch model with random weights (torchvision's
ResNets, timm's TResNet and ViT) is converted with `asl_jax.models.pretrained.from_torch`, so
both frameworks compute with the same weights on the same images (80 classes, float32). Timed,
side by side in one process (interleaved rounds, a new random order each round,
`benchmarks._timing.interleaved_timings`):

- **eval forward**: logits of one batch, batch norm in inference mode;
- **training step**: forward with batch-norm statistics, the summed ASL (γ+ = 0, γ− = 4,
  m = 0.05: the project's `asymmetric_loss` in JAX, the official formulation in PyTorch,
  `benchmarks.loss_reference.torch_asl`), backward, Adam (lr 1e-4). JAX: one jitted
  `value_and_grad` + `optax.adam` program with the parameters, statistics and optimizer state
  donated. PyTorch: ``zero_grad``, forward, loss, ``backward()``, ``Adam.step()``; with
  torch.compile the model is compiled (inductor), the loss and optimizer stay eager.

JAX runs twice: compiled with XLA's defaults, and with the model's XLA:CPU library fusions
(`asl_jax.models.cpu_compiler_options`: what training uses on CPU devices); a model without any
(ViT-B/16) with the other models' set, `asl_jax.models.CPU_FUSIONS`, to show why it has none.

Memory: for every candidate the growth of the process's peak resident set during one call
(after compilation and a first call; the peak is reset through ``/proc/self/clear_refs`` after
``malloc_trim``, so the same method measures both frameworks), and for JAX the compiled
executable's own ``memory_analysis()`` (arguments + outputs + temporaries). The logits of the
two frameworks on the benchmark batch and the loss of their first training step are compared,
so that the times are of the same computation. "On paper": XLA's FLOP count of the training
step and the images/s it implies on an accelerator at an assumed utilisation.

    python -m benchmarks.models                         # 224 px, batch 32: stdout, JSON
    python -m benchmarks.models --batch 8 --rounds 3 --update-doc  # also BENCHMARKS.md

Two more comparisons live here: ``--heads`` (the linear classifier head against ML-Decoder, JAX
only) and ``--inference`` (images/s of the exported inference function in JAX and ONNX Runtime
against the PyTorch model in eager mode, at batch 1 and 32); see the end of this module.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from asl_jax.compile_options import FAST_COMPILE, cpu_library_fusions
from asl_jax.models import CPU_FUSIONS, cpu_compiler_options
from asl_jax.models.efficientnet import VARIANTS
from benchmarks import _machine, _timing
from benchmarks._train_common import _flops, _ms, _rate
from benchmarks.loss_on_paper import ACCELERATORS, UTILISATION
from benchmarks.loss_reference import CLIP, GAMMA_NEG, GAMMA_POS, torch_asl, torch_available

SECTION = "models"
DEFAULT_JSON = "benchmarks/results/models.json"
NUM_CLASSES = 80
LEARNING_RATE = 1e-4
DEFAULT_MODELS = ("resnet50", "tresnet_m", "vit_b16")
#: The PyTorch model each benchmarked model equals (package of its torch layout, model name).
TORCH_NAMES = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "tresnet_m": "tresnet_m",
    "tresnet_l": "tresnet_l",
    "vit_b16": "vit_base_patch16_224",
    # timm's names of the EfficientNets (the smallest pretrained models).
    **{name: timm_name for name, (_, timm_name) in VARIANTS.items()},
}
JAX, EAGER, COMPILED = "JAX (jit)", "PyTorch eager", "PyTorch torch.compile"
#: JAX compiled with the model's XLA:CPU library fusions (`asl_jax.models.cpu_compiler_options`,
#: what training uses on CPU devices with `model.cpu_fast_kernels`).
JAX_FUSED = "JAX (jit, CPU fusions)"
EVAL, TRAIN = "eval forward", "training step"
#: The accelerator of the "on paper" estimate (a key of `benchmarks.loss_on_paper.ACCELERATORS`).
ACCELERATOR = "A100 40GB"


@dataclasses.dataclass
class Candidate:
    """One framework × mode: what the timing calls, and what was measured besides the time."""

    framework: str
    mode: str
    call: Callable[[], object]
    first_call_seconds: float  # compilation (JAX, torch.compile) or first eager call
    peak_growth_bytes: float | None = None  # peak RSS growth during the first timed call
    xla_bytes: float | None = None  # JAX: argument + output + temp bytes of the executable
    flops: float | None = None  # JAX: XLA's cost analysis of the program

    def __call__(self) -> object:
        if self.peak_growth_bytes is None:  # the timing's warm-up call measures the memory
            growth, _ = peak_rss_growth(self.call)
            self.peak_growth_bytes = growth if growth is not None else float("nan")
            return None
        return self.call()


@dataclasses.dataclass
class ModelResult:
    name: str
    image_size: int
    batch_size: int
    rounds: int
    parameters: int
    candidates: dict[str, Candidate]  # key: "framework / mode"
    timings: dict[str, _timing.Timing]
    logits_rel_diff: dict[str, float]  # framework -> max |Δ logits| / max |JAX logits|
    first_losses: dict[str, float]  # framework -> loss of its first training step
    compile_error: str | None = None


# ------------------------------------------------------------------------------------------------
# Memory


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_growth(fn: Callable[[], object]) -> tuple[float | None, object]:
    """(bytes by which the peak resident set grew while `fn` ran, its result).

    Freed heap memory is first given back to the system (``malloc_trim``) and the peak reset to
    the current resident set (``/proc/self/clear_refs``, Linux); None where that is unavailable.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None, fn()
    before = _rss_kib("VmRSS")
    out = fn()
    peak = _rss_kib("VmHWM")
    if before is None or peak is None:
        return None, out
    return float(max(peak - before, 0) * 1024), out


# ------------------------------------------------------------------------------------------------
# The two frameworks


def _import_torch(threads: int) -> Any:
    # Passive OpenMP waiting: spinning PyTorch threads otherwise slow XLA down in this process
    # (see benchmarks/loss_kernel.py). triton (a GPU compiler, unused on CPU) can crash a process
    # that has loaded TensorFlow; inductor's CPU backend does not need it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.modules.setdefault("triton", None)
    import torch

    torch.set_num_threads(threads)
    return torch


def torch_model(torch: Any, name: str, num_classes: int) -> Any:
    """The torchvision / timm model that `name` equals, with random weights (seed 0)."""
    from asl_jax.models import MODELS

    torch.manual_seed(0)
    source = MODELS[name].torch.source
    if source == "torchvision":
        import torchvision

        return getattr(torchvision.models, TORCH_NAMES[name])(weights=None, num_classes=num_classes)
    import timm

    # ViT: the position embeddings of the 224 px grid, resized in the forward pass at other
    # sizes, as the Flax model does.
    kwargs = {"dynamic_img_size": True} if name == "vit_b16" else {}
    return timm.create_model(TORCH_NAMES[name], pretrained=False, num_classes=num_classes, **kwargs)


def _adam_step_fn(model: Any) -> tuple[Callable, Any]:
    """The jitted training step (value_and_grad of the summed ASL + Adam), and its optimizer."""
    import optax

    from asl_jax.losses import asymmetric_loss

    tx = optax.adam(LEARNING_RATE)

    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(p):
            logits, updates = model.apply(
                {"params": p, "batch_stats": batch_stats}, images, train=True,
                mutable=["batch_stats"],
            )  # fmt: skip
            loss = asymmetric_loss(
                logits, labels, gamma_pos=GAMMA_POS, gamma_neg=GAMMA_NEG, clip=CLIP
            ).sum()
            return loss, updates.get("batch_stats", batch_stats)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2)), tx


def _xla_bytes(compiled: Any) -> float | None:
    try:
        m = compiled.memory_analysis()
        return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # not every backend implements it
        return None


def jax_candidates(
    name: str,
    variables: dict,
    images: np.ndarray,
    labels: np.ndarray,
    options: dict | None,
    framework: str = JAX,
) -> tuple[list[Candidate], np.ndarray, float]:
    """JAX's eval and training candidates compiled with ``options`` (named ``framework``), the
    eval logits and the first step's loss."""
    from asl_jax.models import create_model

    model = create_model(name, num_classes=NUM_CLASSES, dtype=jnp.float32, normalization="none")
    x, y = jnp.asarray(images), jnp.asarray(labels)
    v = jax.device_put(variables)
    start = time.perf_counter()
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(v, x).compile(options)
    eval_seconds = time.perf_counter() - start
    logits = np.asarray(forward(v, x))
    step, tx = _adam_step_fn(model)
    # Copies: the step donates its state, and `v` must stay intact for the eval forward.
    state = [jax.tree.map(jnp.copy, v["params"]), jax.tree.map(jnp.copy, v.get("batch_stats", {}))]
    state.append(tx.init(state[0]))
    start = time.perf_counter()
    train = step.lower(*state, x, y).compile(options)
    train_seconds = time.perf_counter() - start
    *new_state, loss = train(*state, x, y)
    state[:] = new_state

    def train_call() -> None:
        *new, loss = train(*state, x, y)
        state[:] = new
        jax.block_until_ready(loss)

    candidates = [
        Candidate(
            framework, EVAL, lambda: jax.block_until_ready(forward(v, x)), eval_seconds,
            xla_bytes=_xla_bytes(forward), flops=_flops(forward),
        ),
        Candidate(
            framework, TRAIN, train_call, train_seconds, xla_bytes=_xla_bytes(train),
            flops=_flops(train),
        ),
    ]  # fmt: skip
    return candidates, logits, float(loss)


def _torch_eval(torch: Any, model: Any, x: Any) -> Callable[[], Any]:
    def call() -> Any:
        with torch.no_grad():
            return model(x)

    return call


def _torch_train(torch: Any, model: Any, forward: Any, x: Any, y: Any) -> Callable[[], Any]:
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def call() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = torch_asl(torch, forward(x), y, detach=False)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return call


def _first(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def torch_candidates(
    torch: Any, source: Any, images: np.ndarray, labels: np.ndarray, *, compile_: bool
) -> tuple[list[Candidate], dict[str, np.ndarray], dict[str, float], str | None]:
    """PyTorch's candidates (eager; torch.compile when asked and when it works), their eval
    logits and first-step losses, and the compilation error, if any."""
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(labels)
    kinds = [(EAGER, lambda m: m)] + ([(COMPILED, torch.compile)] if compile_ else [])
    candidates, logits, losses, error = [], {}, {}, None
    for framework, wrap in kinds:
        eval_model, train_model = copy.deepcopy(source).eval(), copy.deepcopy(source).train()
        try:
            eval_call = _torch_eval(torch, wrap(eval_model), x)
            eval_seconds, out = _first(eval_call)
            train_call = _torch_train(torch, train_model, wrap(train_model), x, y)
            train_seconds, loss = _first(train_call)
        except Exception as e:  # torch.compile needs a working C++ toolchain
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"{framework} failed, left out: {error}")
            continue
        logits[framework], losses[framework] = out.numpy(), float(loss)
        candidates += [
            Candidate(framework, EVAL, eval_call, eval_seconds),
            Candidate(framework, TRAIN, train_call, train_seconds),
        ]
    return candidates, logits, losses, error


def run_model(name: str, args: argparse.Namespace, torch: Any) -> ModelResult:
    """Builds, converts, compiles and times one model in both frameworks."""
    from asl_jax.models.pretrained import from_torch

    rng = np.random.default_rng(args.seed)
    size, batch = args.image_size, args.batch
    images = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
    labels = (rng.uniform(size=(batch, NUM_CLASSES)) < 0.05).astype(np.float32)
    source = torch_model(torch, name, NUM_CLASSES)
    parameters = sum(p.numel() for p in source.parameters())
    variables = from_torch(name, source.state_dict(), num_classes=NUM_CLASSES, image_size=size)
    options = dict(FAST_COMPILE) if args.fast_compile else {}
    print(f"\n{name}: {parameters / 1e6:.1f} M parameters, {size} px, batch {batch}")
    ours, jax_logits, jax_loss = jax_candidates(name, variables, images, labels, options or None)
    # A model without CPU fusions of its own is timed with the other models' (CPU_FUSIONS): the
    # row shows why it has none.
    fusions = cpu_compiler_options(name) or cpu_library_fusions(CPU_FUSIONS)
    losses, logits = {}, {}
    fused, logits[JAX_FUSED], losses[JAX_FUSED] = jax_candidates(
        name, variables, images, labels, {**options, **fusions}, JAX_FUSED
    )
    ours += fused
    theirs, torch_logits, torch_losses, error = torch_candidates(
        torch, source, images, labels, compile_=args.compile
    )
    logits.update(torch_logits)
    losses.update(torch_losses)
    scale = float(np.abs(jax_logits).max()) or 1.0
    rel = {k: float(np.abs(v - jax_logits).max()) / scale for k, v in logits.items()}
    candidates = {f"{c.framework} / {c.mode}": c for c in [*ours, *theirs]}
    for key, c in candidates.items():
        print(f"  {key}: first call {c.first_call_seconds:.1f} s")
    timings = _timing.interleaved_timings(
        candidates, rounds=args.rounds, warmup=1, min_sample_seconds=0.0, seed=args.seed
    )
    return ModelResult(
        name, size, batch, args.rounds, int(parameters), candidates, timings, rel,
        {JAX: jax_loss, **losses}, error,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Tables


def _mib(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x / 2**20:,.0f}"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference or not np.isfinite(value) or not np.isfinite(reference):
        return "—"
    return f"{value / reference:.2f}×"


def timing_table(result: ModelResult) -> str:
    """One row per framework × mode: time, noise, images/s, time ratios to JAX and to PyTorch
    eager, memory (and its ratio to PyTorch eager's), first call."""
    rows = []
    for key, c in result.candidates.items():
        t = result.timings[key]
        reference = result.timings[f"{JAX} / {c.mode}"].median
        eager = result.candidates.get(f"{EAGER} / {c.mode}")
        eager_time = result.timings[f"{EAGER} / {c.mode}"].median if eager else None
        eager_peak = eager.peak_growth_bytes if eager else None
        rows.append(
            [
                c.mode, c.framework, _ms(t.median), f"{t.spread:.0%}",
                _rate(result.batch_size / t.median), f"{t.median / reference:.2f}×",
                _ratio(t.median, eager_time), _mib(c.peak_growth_bytes),
                _ratio(c.peak_growth_bytes, eager_peak), _mib(c.xla_bytes),
                f"{c.first_call_seconds:.1f}",
            ]
        )  # fmt: skip
    order = [JAX, JAX_FUSED, EAGER, COMPILED]
    rows.sort(key=lambda r: (r[0] != EVAL, order.index(r[1]) if r[1] in order else len(order)))
    headers = [
        "mode", "framework", "median ms / batch", "IQR/median", "images/s", "time × JAX",
        "time × PyTorch eager", "peak RSS growth MiB", "peak × PyTorch eager",
        "XLA args+out+temp MiB", "first call s",
    ]  # fmt: skip
    return _timing.markdown_table(headers, rows, align="ll" + "r" * 9)


def fusions_line(name: str) -> str:
    """The model's CPU library fusions, as its registry entry names them."""
    from asl_jax.models import MODELS

    kinds = MODELS[name].cpu_fusions
    if kinds:
        return f"CPU fusions of {name}: " + ", ".join(f"`{k}`" for k in kinds)
    return (
        f"CPU fusions of {name}: none, it trains with XLA's default compilation; its "
        f"'{JAX_FUSED}' rows use the other models' ({', '.join(CPU_FUSIONS)}) to show why"
    )


def agreement_line(result: ModelResult) -> str:
    """The logits and first-step losses of the frameworks against JAX's."""
    parts = [
        f"{framework} logits vs JAX: max relative difference {diff:.1e}"
        for framework, diff in result.logits_rel_diff.items()
    ]
    losses = ", ".join(f"{k} {v:.6g}" for k, v in result.first_losses.items())
    return "; ".join(parts) + f". Loss of the first training step: {losses}."


def on_paper_line(result: ModelResult) -> str | None:
    """XLA's FLOPs of the JAX training step and the images/s they imply on an accelerator."""
    flops = result.candidates[f"{JAX} / {TRAIN}"].flops
    if not flops:
        return None
    peak = ACCELERATORS[ACCELERATOR][0]
    per_image = flops / result.batch_size
    rate = peak * UTILISATION / per_image
    measured = result.batch_size / result.timings[f"{JAX} / {TRAIN}"].median
    return (
        f"On paper: XLA counts {flops / 1e9:,.1f} GFLOP per training step "
        f"({per_image / 1e9:.1f} GFLOP per image); an {ACCELERATOR} ({peak / 1e12:.0f} TFLOP/s "
        f"bf16 dense peak, assumed) at an assumed {UTILISATION:.0%} of that peak would run "
        f"{rate:,.0f} images/s, {rate / measured:,.0f}× "
        "the JAX step measured here. An estimate from FLOPs alone, not a measurement."
    )


def render_markdown(results: Sequence[ModelResult], info: dict, command: str) -> str:
    """The `models` section of BENCHMARKS.md."""
    parts = [
        "## Models: JAX vs PyTorch",
        "The same weights (a random PyTorch model converted with `from_torch`), the same "
        f"images and labels ({NUM_CLASSES} classes, float32, no input normalisation in either "
        "framework) in JAX (jit) and PyTorch (eager, and torch.compile when run), on the CPU. "
        f"{JAX_FUSED}: the same JAX programs compiled with the model's XLA:CPU library fusions "
        "(the `cpu_fusions` of its registry entry, as `xla_cpu_experimental_ynn_fusion_type`), "
        "what training compiles on CPU devices by default (`model.cpu_fast_kernels`). "
        "Eval forward: logits of one batch. Training step: forward with batch statistics, "
        f"summed ASL (γ+ = {GAMMA_POS:g}, γ− = {GAMMA_NEG:g}, m = {CLIP:g}), backward, Adam "
        f"(lr {LEARNING_RATE:g}). All candidates of a model timed in the same process, "
        "interleaved (a new random order each round), after compilation and one untimed call; "
        "ratios to JAX are of medians. Peak RSS growth: how much the process's peak resident "
        "set grew during one call (after `malloc_trim`, peak reset through "
        "`/proc/self/clear_refs`), the same method for both frameworks; XLA's figure is the "
        "executable's `memory_analysis()` (its arguments, i.e. the weights and optimizer state "
        "it reads, included). **The machine was shared with other jobs**: absolute times are "
        "noisy, ratios measured in the same rounds less so.",
        f"Command: `{command}`",
        _machine.machine_markdown(info),
    ]
    for r in results:
        parts.append(
            f"### {r.name}: {r.image_size} px, batch {r.batch_size}, {r.parameters / 1e6:.1f} M "
            f"parameters ({r.rounds} rounds)"
        )
        parts.append(fusions_line(r.name))
        parts.append(timing_table(r))
        parts.append(agreement_line(r))
        if r.compile_error:
            parts.append(
                f"torch.compile failed on this machine and was left out: `{r.compile_error}`."
            )
        line = on_paper_line(r)
        if line:
            parts.append(line)
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from asl_jax.models import pretrained_model_names

    choices = [n for n in pretrained_model_names() if n in TORCH_NAMES]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.models",
        description="JAX jit vs PyTorch eager / torch.compile: eval forward and training step.",
    )
    parser.add_argument("--models", nargs="+", choices=choices, default=list(DEFAULT_MODELS))
    parser.add_argument("--image-size", type=int, default=224, help="image side (224)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (32)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="leave torch.compile out"
    )
    parser.add_argument(
        "--fast-compile", action="store_true", help="XLA without its expensive passes (tests)"
    )
    _timing.add_document_flags(parser, SECTION)
    parser.add_argument("--json", default=DEFAULT_JSON, help="JSON file ('' to skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for field in ("image_size", "batch", "rounds"):
        if getattr(args, field) < 1:
            parser.error(f"--{field.replace('_', '-')} must be >= 1, got {getattr(args, field)}")
    if args.image_size % 32:
        parser.error(
            f"--image-size must be a multiple of 32 (the models' stride), got {args.image_size}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> list[ModelResult]:
    """Runs the benchmark, prints its tables, writes the `models` section and the JSON."""
    args = parse_args(argv)
    if not torch_available():
        raise SystemExit("benchmarks.models needs torch: pip install 'asl-jax[torch]'")
    info = _machine.machine_info(("numpy", "torch", "torchvision", "timm"))
    command = ("python -m benchmarks.models " + " ".join(argv or sys.argv[1:])).strip()
    print(_machine.machine_markdown(info))
    torch = _import_torch(_machine.usable_cores())
    results = []
    for name in args.models:
        result = run_model(name, args, torch)
        print(fusions_line(name))
        print(timing_table(result))
        print(agreement_line(result))
        line = on_paper_line(result)
        if line:
            print(line)
        results.append(result)
    output = _timing.document_path(args)
    if output:
        _timing.update_section(output, SECTION, render_markdown(results, info, command))
        print(f"Wrote the '{SECTION}' section of {os.path.abspath(output)}")
    if args.json:
        path = _machine.write_results_json(args.json, SECTION, command, info, results)
        print(f"Wrote {os.path.abspath(path)}")
    return results


# ------------------------------------------------------------------------------------------------
# The classifier head's cost: linear against ML-Decoder (JAX only)
#
#     python -m benchmarks.models --heads                    # ResNet-50, 224 px, batch 8
#     python -m benchmarks.models --heads --update-doc       # also BENCHMARKS.md

import functools  # noqa: E402 - the head comparison's own imports, kept with it
import types  # noqa: E402

HEADS_SECTION = "models_heads"
HEADS_JSON = "benchmarks/results/models_heads.json"
#: Label counts of the head comparison: COCO's and ImageNet's.
HEAD_CLASSES = (80, 1000)


@dataclasses.dataclass
class HeadResult:
    """One backbone × head × number of classes: parameters, times and the XLA memory."""

    model: str
    head: str
    num_classes: int
    image_size: int
    batch_size: int
    parameters: int
    head_parameters: int
    timings: dict[str, _timing.Timing]  # EVAL / TRAIN -> timing
    xla_bytes: dict[str, float | None]  # EVAL / TRAIN -> argument + output + temp bytes
    compile_seconds: dict[str, float]


def head_candidates(
    name: str, head: str, num_classes: int, args: argparse.Namespace
) -> tuple[HeadResult, dict[str, Callable[[], object]]]:
    """The compiled eval forward and training step (ASL + Adam, as above) of ``name`` with the
    classifier ``head`` for ``num_classes`` labels, on random weights and images."""
    from asl_jax.models import create_model, torch_layout

    model = create_model(
        name, num_classes=num_classes, dtype=jnp.float32, normalization="none", head=head
    )
    rng = np.random.default_rng(args.seed)
    x = jnp.asarray(rng.uniform(size=(args.batch, args.image_size, args.image_size, 3)), "float32")
    y = jnp.asarray(rng.uniform(size=(args.batch, num_classes)) < 0.05, "float32")
    options = FAST_COMPILE if args.fast_compile else None
    init = jax.jit(lambda k: model.init(k, x[:1], train=False), compiler_options=FAST_COMPILE)
    v = init(jax.random.key(args.seed))
    start = time.perf_counter()
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(v, x).compile(options)
    compile_seconds = {EVAL: time.perf_counter() - start}
    # ML-Decoder's dropout draws from the "dropout" stream in training (a fixed key: timing only).
    with_dropout = types.SimpleNamespace(
        apply=functools.partial(model.apply, rngs={"dropout": jax.random.key(args.seed)})
    )
    step, tx = _adam_step_fn(with_dropout)
    state = [v["params"], v.get("batch_stats", {})]
    state.append(tx.init(state[0]))
    start = time.perf_counter()
    train = step.lower(*state, x, y).compile(options)
    compile_seconds[TRAIN] = time.perf_counter() - start
    forward_v = jax.tree.map(jnp.copy, v)

    def train_call() -> None:
        *new, loss = train(*state, x, y)
        state[:] = new
        jax.block_until_ready(loss)

    layout = torch_layout(name, head)
    head_path = (layout.flax_head or layout.head).split(".")[0] if layout else None
    count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))  # noqa: E731
    result = HeadResult(
        model=name,
        head=head,
        num_classes=num_classes,
        image_size=args.image_size,
        batch_size=args.batch,
        parameters=count(v["params"]),
        head_parameters=count(v["params"].get(head_path, {})) if head_path else 0,
        timings={},
        xla_bytes={EVAL: _xla_bytes(forward), TRAIN: _xla_bytes(train)},
        compile_seconds=compile_seconds,
    )
    calls = {EVAL: lambda: jax.block_until_ready(forward(forward_v, x)), TRAIN: train_call}
    return result, calls


def run_heads(args: argparse.Namespace) -> list[HeadResult]:
    """Every head × number of classes on ``args.models[0]``, timed in interleaved rounds."""
    name = args.models[0]
    results, calls = [], {}
    for num_classes in args.head_classes:
        for head in ("linear", "ml_decoder"):
            result, fns = head_candidates(name, head, num_classes, args)
            results.append(result)
            for mode, fn in fns.items():
                calls[(len(results) - 1, mode)] = fn
    keys = {f"{i}/{mode}": key for key, (i, mode) in zip(calls, calls, strict=True)}
    timings = _timing.interleaved_timings(
        {label: calls[key] for label, key in keys.items()}, rounds=args.rounds, seed=args.seed
    )
    for label, (i, mode) in keys.items():
        results[i].timings[mode] = timings[label]
    return results


def heads_table(results: Sequence[HeadResult]) -> str:
    """Markdown: one row per head and number of classes, the ML-Decoder's extra cost beside."""
    lines = [
        "| classes | head | parameters (head) | eval forward (ms) | training step (ms) | "
        "training step vs linear | XLA memory, training step (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    linear = {r.num_classes: r for r in results if r.head == "linear"}
    for r in results:
        base = linear[r.num_classes].timings[TRAIN].median
        ratio = r.timings[TRAIN].median / base
        lines.append(
            f"| {r.num_classes} | {r.head} | {r.parameters / 1e6:.2f}M "
            f"({r.head_parameters / 1e6:.2f}M) | {_ms(r.timings[EVAL].median)} | "
            f"{_ms(r.timings[TRAIN].median)} | ×{ratio:.2f} | {_mib(r.xla_bytes[TRAIN])} |"
        )
    return "\n".join(lines)


def render_heads_markdown(results: Sequence[HeadResult], info: dict, command: str) -> str:
    r = results[0]
    return "\n".join(
        [
            f"## The classifier head: linear against ML-Decoder ({r.model}, JAX)",
            "",
            f"`{command}`: {r.model} at {r.image_size} px, batch {r.batch_size}, float32, "
            "random weights; the eval forward and the jitted training step (summed ASL, "
            "Adam), medians of interleaved rounds; memory: XLA's arguments + outputs + "
            "temporaries of the compiled training step.",
            "",
            machine_and_load(info),
            "",
            heads_table(results),
        ]
    )


def machine_and_load(info: dict) -> str:
    """The machine's description and the load average at the start and the end of the run."""
    after = " / ".join(f"{x:.2f}" for x in info["load_average_after"])
    return f"{_machine.machine_markdown(info)}\n- Load average when the run ended: {after}"


def heads_main(argv: Sequence[str]) -> list[HeadResult]:
    """``--heads``: the head comparison (prints it; ``--update-doc`` / ``--output`` / ``--json``
    as the framework comparison)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.models --heads",
        description="The classifier head's cost: linear against ML-Decoder (JAX only).",
    )
    parser.add_argument("--heads", action="store_true", required=True)
    parser.add_argument("--models", nargs=1, default=["resnet50"], help="backbone (resnet50)")
    parser.add_argument("--head-classes", nargs="+", type=int, default=list(HEAD_CLASSES))
    parser.add_argument("--image-size", type=int, default=224, help="image side (224)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument(
        "--fast-compile", action="store_true", help="XLA without its expensive passes (tests)"
    )
    _timing.add_document_flags(parser, HEADS_SECTION)
    parser.add_argument("--json", default=HEADS_JSON, help="JSON file ('' to skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = _machine.machine_info()
    command = ("python -m benchmarks.models " + " ".join(argv)).strip()
    results = run_heads(args)
    info["load_average_after"] = list(os.getloadavg())
    markdown = render_heads_markdown(results, info, command)
    print(markdown)
    _timing.publish(args, HEADS_SECTION, markdown, command=command, info=info, results=results)
    return results


# ------------------------------------------------------------------------------------------------
# Inference throughput: JAX jit, ONNX Runtime and PyTorch eager on the same weights
#
#     python -m benchmarks.models --inference                 # ResNet-50, EfficientNet-B0
#     python -m benchmarks.models --inference --update-doc    # also BENCHMARKS.md

INFERENCE_SECTION = "models_inference"
INFERENCE_JSON = "benchmarks/results/models_inference.json"
INFERENCE_MODELS = ("resnet50", "efficientnet_b0")
INFERENCE_BATCHES = (1, 32)
ONNX = "ONNX Runtime"
INFERENCE_FRAMEWORKS = (JAX, ONNX, EAGER)


@dataclasses.dataclass
class InferenceResult:
    """One model × batch size: the seconds per batch of each framework, and how far its
    probabilities are from JAX's."""

    model: str
    image_size: int
    batch_size: int
    timings: dict[str, _timing.Timing]  # framework -> timing
    prob_abs_diff: dict[str, float]  # framework -> max |Δ probability| vs JAX


def inference_calls(
    torch: Any, name: str, size: int, batches: Sequence[int], seed: int
) -> tuple[dict[tuple[int, str], Callable[[], object]], dict[tuple[int, str], np.ndarray]]:
    """Per (batch size, framework): a call computing the probabilities of one batch, and those
    probabilities. The exported function of ``train.export`` (``train.portable``), jitted in
    JAX and converted for ONNX Runtime; the torchvision / timm model in eager mode, with a
    sigmoid. No input normalisation in any of them (the weights are random)."""
    import onnxruntime

    from asl_jax.models import create_model
    from asl_jax.models.pretrained import from_torch
    from train import portable

    source = torch_model(torch, name, NUM_CLASSES).eval()
    variables = from_torch(name, source.state_dict(), num_classes=NUM_CLASSES, image_size=size)
    model = create_model(name, num_classes=NUM_CLASSES, dtype=jnp.float32, normalization="none")
    function = portable.inference_function(model, variables)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = _machine.usable_cores()
    session = onnxruntime.InferenceSession(
        portable.to_onnx(function, size, {}), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(seed)
    calls, probs = {}, {}
    for batch in batches:
        images = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
        x_jax, x_torch = jnp.asarray(images), torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        compiled = jax.jit(function).lower(x_jax).compile()

        def torch_call(x: Any = x_torch) -> np.ndarray:
            with torch.no_grad():
                return torch.sigmoid(source(x)).numpy()

        per_framework = {
            JAX: lambda c=compiled, x=x_jax: np.asarray(jax.block_until_ready(c(x))),
            ONNX: lambda x=images: portable.onnx_probabilities(session, x),
            EAGER: torch_call,
        }
        for framework, call in per_framework.items():
            calls[(batch, framework)] = call
            probs[(batch, framework)] = call()
    return calls, probs


def run_inference(args: argparse.Namespace, torch: Any) -> list[InferenceResult]:
    """Every model × batch size × framework, timed in interleaved rounds per model."""
    results = []
    for name in args.models:
        print(f"\n{name}: {args.image_size} px, batches {', '.join(map(str, args.batches))}")
        calls, probs = inference_calls(torch, name, args.image_size, args.batches, args.seed)
        labels = {f"{batch}/{framework}": (batch, framework) for batch, framework in calls}
        timings = _timing.interleaved_timings(
            {label: calls[key] for label, key in labels.items()},
            rounds=args.rounds,
            warmup=1,
            min_sample_seconds=0.0,
            seed=args.seed,
        )
        for batch in args.batches:
            reference = probs[(batch, JAX)]
            results.append(
                InferenceResult(
                    model=name,
                    image_size=args.image_size,
                    batch_size=batch,
                    timings={f: timings[f"{batch}/{f}"] for f in INFERENCE_FRAMEWORKS},
                    prob_abs_diff={
                        f: float(np.abs(probs[(batch, f)] - reference).max())
                        for f in INFERENCE_FRAMEWORKS
                        if f != JAX
                    },
                )
            )
    return results


def inference_table(results: Sequence[InferenceResult]) -> str:
    """Markdown: images/s of each framework (median over the rounds), one row per model and
    batch size, and the largest probability difference to JAX."""
    header = " | ".join(f"{f} (images/s)" for f in INFERENCE_FRAMEWORKS)
    lines = [
        f"| model | batch | {header} | max abs. Δ probability vs JAX |",
        "|---|---|" + "---|" * len(INFERENCE_FRAMEWORKS) + "---|",
    ]
    for r in results:
        rates = " | ".join(
            f"{r.batch_size / r.timings[f].median:.1f}" for f in INFERENCE_FRAMEWORKS
        )
        diffs = ", ".join(f"{f} {d:.0e}" for f, d in r.prob_abs_diff.items())
        lines.append(f"| {r.model} | {r.batch_size} | {rates} | {diffs} |")
    return "\n".join(lines)


def render_inference_markdown(results: Sequence[InferenceResult], info: dict, command: str) -> str:
    return "\n".join(
        [
            "## Inference: JAX, ONNX Runtime and PyTorch",
            "",
            f"`{command}`: the probabilities (sigmoid of {NUM_CLASSES} logits) of one batch of "
            f"{results[0].image_size} px float32 images, on the CPU, with the same random "
            "weights in the three: a torchvision / timm model in PyTorch eager mode (no "
            "gradient), converted with `from_torch` to the inference function that "
            "`python -m train.export` writes, jitted in JAX and exported to ONNX for ONNX "
            "Runtime (as many threads as usable cores). Each framework takes its own layout "
            "(NHWC for JAX and ONNX, NCHW for PyTorch), made before timing. Images/s = batch "
            "size / median seconds per batch, all candidates of a model timed in the same "
            "interleaved rounds after one untimed call. **The machine was shared with other "
            "jobs**: compare the frameworks within a row.",
            "",
            machine_and_load(info),
            "",
            inference_table(results),
        ]
    )


def inference_main(argv: Sequence[str]) -> list[InferenceResult]:
    """``--inference``: the inference throughput (prints it; ``--update-doc`` / ``--output`` /
    ``--json`` as the framework comparison)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.models --inference",
        description="Inference images/s: JAX jit, ONNX Runtime and PyTorch eager.",
    )
    parser.add_argument("--inference", action="store_true", required=True)
    parser.add_argument("--models", nargs="+", default=list(INFERENCE_MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(INFERENCE_BATCHES))
    parser.add_argument("--image-size", type=int, default=224, help="image side (224)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    _timing.add_document_flags(parser, INFERENCE_SECTION)
    parser.add_argument("--json", default=INFERENCE_JSON, help="JSON file ('' to skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = [n for n in args.models if n not in TORCH_NAMES]
    if unknown:
        parser.error(f"--models {' '.join(unknown)}: expected some of {', '.join(TORCH_NAMES)}")
    if not torch_available():
        raise SystemExit("--inference needs torch: pip install 'asl-jax[bench]'")
    from train.portable import require_onnx

    try:
        require_onnx()
    except ImportError as e:
        raise SystemExit(f"--inference: {e}") from None
    info = _machine.machine_info(("numpy", "torch", "torchvision", "timm", "onnxruntime"))
    command = ("python -m benchmarks.models " + " ".join(argv)).strip()
    results = run_inference(args, _import_torch(_machine.usable_cores()))
    info["load_average_after"] = list(os.getloadavg())
    markdown = render_inference_markdown(results, info, command)
    print(markdown)
    _timing.publish(args, INFERENCE_SECTION, markdown, command=command, info=info, results=results)
    return results


if __name__ == "__main__":
    if "--heads" in sys.argv[1:]:
        heads_main(sys.argv[1:])
    elif "--inference" in sys.argv[1:]:
        inference_main(sys.argv[1:])
    else:
        main()
