"""Test-suite setup shared by every test module.

Eight simulated CPU devices let the data-parallel code paths run on a laptop-sized machine; the
flag must be set before JAX initialises its backend, so it lives here, at import time.
"""

import os
import sys

# Quiet TensorFlow's start-up logging in the TFDS tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# torch imports triton (its GPU kernel compiler) when present; in a process that has also loaded
# TensorFlow (the TFDS tests), loading triton's native library can crash the process. The tests
# run torch on CPU only, where triton is never used: make it unavailable (torch checks for it
# with a plain import and carries on without it).
sys.modules.setdefault("triton", None)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
