"""XLA compiler options shared by the library, the training engine and the benchmarks.

Pass them as ``jax.jit(f, compiler_options=FAST_COMPILE)`` (or to ``.lower(...).compile(...)``).
Models and training both use them, so they live here, below both: neither has to import the
other for them.
"""

#: XLA:CPU options that skip the expensive optimisations, for programs whose compile time matters
#: more than their run time: a state initialiser runs once, and random initialisers unroll into
#: many ops, so it compiles about 5× faster for a run time that does not matter (the same goes for
#: the tiny programs of smoke tests). Meant for the CPU backend only.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

#: The XLA:CPU option that hands kinds of HLO ops to the YNNPACK kernel library instead of XLA's
#: own code generation (its values: ``LIBRARY_FUSION_TYPE_<KIND>``, comma-separated).
CPU_LIBRARY_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
#: The library-fusion kinds XLA:CPU knows (the names after ``LIBRARY_FUSION_TYPE_``).
CPU_LIBRARY_FUSION_KINDS = ("INDIVIDUAL_DOT", "DOT", "INDIVIDUAL_CONVOLUTION", "REDUCE", "ELTWISE")


def cpu_library_fusions(kinds: tuple[str, ...]) -> dict[str, str]:
    """The XLA:CPU compiler options that run the ops of ``kinds`` through YNNPACK.

    Per ``jax.jit`` (``compiler_options=``), not process-wide ``XLA_FLAGS``: a user's own
    programs in the same process keep XLA's defaults. Meant for the CPU backend only.

    Args:
      kinds: names of :data:`CPU_LIBRARY_FUSION_KINDS` (``("INDIVIDUAL_DOT", "REDUCE")``); empty:
        no option (XLA's default code generation).

    Raises:
      ValueError: a kind XLA:CPU does not know.
    """
    unknown = [k for k in kinds if k not in CPU_LIBRARY_FUSION_KINDS]
    if unknown:
        raise ValueError(
            f"CPU library fusion kinds {unknown}: expected names of "
            f"{', '.join(CPU_LIBRARY_FUSION_KINDS)}"
        )
    if not kinds:
        return {}
    return {CPU_LIBRARY_FUSION_OPTION: ",".join(f"LIBRARY_FUSION_TYPE_{k}" for k in kinds)}
