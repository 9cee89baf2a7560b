"""HLO inspection for the loss benchmark: per-element work of a compiled function.

Counts, in the optimized HLO of a `jax.stages.Compiled`, the transcendental operations and other
element-wise operations per element of the B×K problem, the fusions of the entry computation and
the B×K arrays it reads and writes; reads XLA's temporary memory.
"""

from __future__ import annotations

import dataclasses
import math
import re

__all__ = ["TRANSCENDENTAL_OPS", "HloStats", "hlo_stats"]

# Opcodes that cost more than a multiply-add: special functions and division.
TRANSCENDENTAL_OPS = (
    "exponential",
    "exponential-minus-one",
    "log",
    "log-plus-one",
    "power",
    "divide",
    "sqrt",
    "rsqrt",
    "cbrt",
    "tanh",
    "logistic",
    "erf",
    "sine",
    "cosine",
    "tan",
    "atan2",
)
_SHORT = {"exponential": "exp", "log-plus-one": "log1p", "power": "pow", "divide": "div"}
_NOT_COMPUTE = {
    "parameter",
    "constant",
    "broadcast",
    "bitcast",
    "reshape",
    "tuple",
    "get-tuple-element",
    "fusion",
    "copy",
    "iota",
    "transpose",
    "slice",
    "opt-barrier",
}
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(\w+)\[([\d,]*)\][^\s]*\s+([\w\-]+)\((.*)$"
)
_OPERAND = re.compile(r"%([\w.\-]+)")


@dataclasses.dataclass(frozen=True)
class HloStats:
    """What the optimized HLO of one jitted function does per element of the B×K problem."""

    transcendentals: dict[str, int]  # opcode -> instructions on B×K arrays (= per element)
    elementwise_ops: int  # every other compute instruction on B×K arrays
    fusions: int  # fusion instructions in the entry computation
    arrays_read: int  # B×K operands read by the entry computation's instructions
    arrays_written: int  # B×K results written by them (temporaries and outputs)
    temp_bytes: int  # compiled.memory_analysis().temp_size_in_bytes

    @property
    def transcendental_total(self) -> int:
        return sum(self.transcendentals.values())

    def transcendental_summary(self) -> str:
        parts = [f"{_SHORT.get(op, op)} {n}" for op, n in self.transcendentals.items() if n]
        return f"{self.transcendental_total} ({', '.join(parts)})" if parts else "0"


def hlo_stats(compiled, num_elements: int) -> HloStats:
    """Counts per-element work in the optimized HLO of `compiled` (a `jax.stages.Compiled`).

    Every instruction whose result has `num_elements` elements runs once per element (fused
    computations are cloned per fusion, so each is executed once per call); instructions on other
    shapes (scalars of the reduction, broadcast operands) are left out.
    """
    text = compiled.as_text()
    transcendentals = dict.fromkeys(TRANSCENDENTAL_OPS, 0)
    elementwise = 0
    shapes: dict[str, int] = {}
    entry_lines: list[str] = []
    in_entry = False
    for line in text.splitlines():
        if line.startswith("ENTRY"):
            in_entry = True
            continue
        if in_entry and line.startswith("}"):
            in_entry = False
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        _, dims, opcode, _ = match.groups()
        size = math.prod(int(d) for d in dims.split(",")) if dims else 1
        name = line.split("=", 1)[0].replace("ROOT", "").strip().lstrip("%")
        shapes[name] = size
        if in_entry:
            entry_lines.append(line)
            continue
        if size != num_elements:
            continue
        if opcode in transcendentals:
            transcendentals[opcode] += 1
        elif opcode not in _NOT_COMPUTE:
            elementwise += 1
    fusions = reads = writes = 0
    for line in entry_lines:
        _, dims, opcode, rest = _INSTRUCTION.match(line).groups()
        if opcode in ("parameter", "constant", "tuple", "get-tuple-element", "bitcast"):
            continue
        fusions += opcode == "fusion"
        size = math.prod(int(d) for d in dims.split(",")) if dims else 1
        writes += size == num_elements
        operands = set(_OPERAND.findall(rest.split("calls=")[0].split("kind=")[0]))
        reads += sum(shapes.get(operand) == num_elements for operand in operands)
    # Output tuples of (scalar, B×K) results are not matched by the regex (tuple-shaped): the
    # gradient is written by its fusion, which is counted above.
    memory = compiled.memory_analysis()
    temp = int(memory.temp_size_in_bytes) if memory is not None else -1
    return HloStats(
        transcendentals={op: n for op, n in transcendentals.items() if n},
        elementwise_ops=elementwise,
        fusions=fusions,
        arrays_read=reads,
        arrays_written=writes,
        temp_bytes=temp,
    )
