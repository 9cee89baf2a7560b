"""The lines ``python -m train`` prints at the end of a run, from its ``summary.json``."""

from __future__ import annotations

from typing import Any


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def format_summary(summary: dict[str, Any]) -> str:
    """The lines printed at the end of ``python -m train``."""
    final = summary.get("final") or {}
    workdir = summary["workdir"]
    lines = []
    if summary["status"] == "interrupted":
        lines.append(
            f"Interrupted at step {summary['step']}/{summary['total_steps']}; checkpoint saved "
            f"to {summary['checkpoint']}. Rerun the same command to resume."
        )
    if final:
        lines.append(
            f"Final mAP {percent(final.get('map'))} (EMA {percent(final.get('map_ema'))}) at step "
            f"{final['step']}; CF1 {percent(final.get('cf1'))}, OF1 {percent(final.get('of1'))}; "
            f"best mAP {percent(summary.get('best_map'))} at step {summary.get('best_map_step')}."
        )
    if summary.get("final_gamma_neg") is not None:
        delta_p = summary.get("final_delta_p")
        lines.append(
            f"Final γ− = {summary['final_gamma_neg']:.3f}, Δp = "
            f"{'n/a' if delta_p is None else f'{delta_p:.3f}'}; "
            f"{summary['num_skipped']} non-finite step(s) skipped; "
            f"wall time {summary['wall_time_s']:.0f} s."
        )
    lines.append(
        f"Results in {workdir}: metrics.jsonl, summary.json, plots/, checkpoints/, config.json."
    )
    return "\n".join(lines)
