"""Test-suite setup shared by every test module.

Eight simulated CPU devices let the data-parallel code paths run on a laptop-sized machine; the
flag must be set before JAX initialises its backend, so it lives here, at import time.
"""

import os

# Quiet TensorFlow's start-up logging in the TFDS tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax

jax.config.update("jax_num_cpu_devices", 8)
