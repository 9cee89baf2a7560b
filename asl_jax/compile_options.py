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
