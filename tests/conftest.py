"""Test-suite setup shared by every test module.

Eight simulated CPU devices let the data-parallel code paths run on a laptop-sized machine; the
flag must be set before JAX initialises its backend, so it lives here, at import time.
"""

import os
import sys
import tempfile

# Quiet TensorFlow's start-up logging in the TFDS tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# torch imports triton (its GPU kernel compiler) when present; in a process that has also loaded
# TensorFlow (the TFDS tests), loading triton's native library crashed the process. The tests
# run torch on CPU only, where triton is never used: make it unavailable (torch checks for it
# with a plain import and carries on without it).
sys.modules.setdefault("triton", None)

# One persistent XLA compilation cache for the whole run, shared by the pytest workers and the
# subprocesses the CLI tests start (they inherit the environment): many tests compile the same
# tiny train and eval programs, and on a 2-core machine compiling is most of their time. The
# directory is new for every run (pytest-xdist gives all workers of a run one id), so no test
# ever reads programs compiled by other code.
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"asl-jax-xla-{_RUN_ID}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
