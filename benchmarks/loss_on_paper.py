"""The loss on an accelerator, on paper: an estimate from the HLO counts of our value-and-grad.

Time of the loss = max(bytes / HBM bandwidth, FLOPs / float32 element-wise throughput) plus a
fixed cost per kernel, against a ResNet-50 step at 224 px; the assumptions are constants below
and are printed with the table.
"""

from __future__ import annotations

from benchmarks import _timing
from benchmarks.loss_hlo import HloStats

__all__ = ["ACCELERATORS", "CLASS_COUNTS", "on_paper"]

# Assumptions of the accelerator estimate (stated in the report).
RESNET50_GFLOPS_PER_IMAGE = 4.1 * 3  # 224 px forward ≈ 4.1 GFLOPs, forward + backward ≈ 3×
RESNET50_BATCH = 256  # images per accelerator and step
RESNET50_FEATURES = 2048  # width of the classifier head's input
UTILISATION = 0.40  # fraction of the bf16 peak a ResNet-50 step achieves (optimistic)
FLOPS_PER_TRANSCENDENTAL = 15  # exp/log/log1p/div as instruction sequences on a GPU
LAUNCH_SECONDS = 3e-6  # per fusion (kernel) in a jitted step
ACCELERATORS = {
    # name: (bf16 dense peak FLOP/s, float32 element-wise FLOP/s, HBM bytes/s). The TPU's vector
    # throughput is our estimate (2 TensorCores × 8×128 lanes × 4 ALUs × 1.05 GHz), not a
    # published figure.
    "A100 40GB": (312e12, 19.5e12, 1.555e12),
    "TPU v4 chip": (275e12, 8.6e12, 1.2e12),
}
CLASS_COUNTS = {
    "Pascal VOC": 20,
    "MS-COCO": 80,
    "NUS-WIDE": 81,
    "ImageNet-1k size": 1000,
    "Open Images (ASL paper)": 9605,
}


def on_paper(stats: HloStats, cpu_ns_per_element: float | None) -> str:
    """Expected cost of our value-and-grad on accelerators, from the HLO counts."""
    bytes_per_element = 4 * (stats.arrays_read + stats.arrays_written)
    flops_per_element = (
        stats.elementwise_ops + FLOPS_PER_TRANSCENDENTAL * stats.transcendental_total
    )
    lines = [
        "Estimated from the optimized HLO of our static-γ value-and-grad (float32 logits and "
        f"labels): {stats.arrays_read} B×K arrays read and {stats.arrays_written} written per "
        f"call, i.e. {bytes_per_element} bytes per element; {stats.transcendental_total} "
        f"transcendentals and divisions plus {stats.elementwise_ops} other element-wise "
        f"operations per element, i.e. about {flops_per_element} FLOPs per element counting "
        f"{FLOPS_PER_TRANSCENDENTAL} per transcendental; {stats.fusions} fusions (kernels).",
        "",
        "Assumptions: time of the loss = max(bytes / HBM bandwidth, FLOPs / float32 element-wise "
        f"throughput) + {LAUNCH_SECONDS * 1e6:.0f} µs per kernel; A100 40GB: 1,555 GB/s, "
        "19.5 TFLOP/s float32, 312 TFLOP/s bf16; TPU v4 chip: 1,200 GB/s, 275 TFLOP/s bf16 and "
        "about 8.6 TFLOP/s float32 element-wise (our estimate: 2 TensorCores × 8×128 lanes × "
        "4 ALUs × 1.05 GHz); a ResNet-50 step at 224 px "
        f"costs {RESNET50_GFLOPS_PER_IMAGE:.1f} GFLOPs per image (≈ 4.1 forward × 3), plus the "
        f"classifier head ({RESNET50_FEATURES}×K, × 3), on {RESNET50_BATCH} images per "
        f"accelerator at {UTILISATION:.0%} of the bf16 peak. That utilisation is optimistic "
        "(published ResNet-50 training throughputs of an A100, a few thousand images per second, "
        "correspond to 10–15 %), so the loss' share below is, if anything, overstated.",
        "",
    ]
    headers = ["dataset", "K", "B×K"]
    for name in ACCELERATORS:
        headers += [f"loss µs, {name}", f"share of step, {name}"]
    headers += ["head FLOPs / backbone", "loss on this CPU, ms (measured rate)"]
    rows = []
    for dataset, classes in CLASS_COUNTS.items():
        elements = RESNET50_BATCH * classes
        row = [dataset, f"{classes:,}", f"{elements:,}"]
        head = RESNET50_FEATURES * classes * 2 * 3 / 1e9  # GFLOPs per image
        for bf16, fp32, bandwidth in ACCELERATORS.values():
            memory_s = elements * bytes_per_element / bandwidth
            compute_s = elements * flops_per_element / fp32
            launch_s = stats.fusions * LAUNCH_SECONDS
            loss_s = max(memory_s, compute_s) + launch_s
            if launch_s > max(memory_s, compute_s):
                bound = "launches"
            else:
                bound = "memory" if memory_s >= compute_s else "compute"
            step_s = (
                RESNET50_BATCH * (RESNET50_GFLOPS_PER_IMAGE + head) * 1e9 / (bf16 * UTILISATION)
            )
            row += [f"{loss_s * 1e6:.1f} ({bound})", f"{loss_s / step_s:.3%}"]
        row.append(f"{head / RESNET50_GFLOPS_PER_IMAGE:.2%}")
        row.append(
            "—" if cpu_ns_per_element is None else f"{elements * cpu_ns_per_element / 1e6:.2f}"
        )
        rows.append(row)
    lines.append(_timing.markdown_table(headers, rows, align="lrr" + "r" * (len(headers) - 3)))
    return "\n".join(lines)
