"""Reference ASL implementations written for the loss benchmark, and the settings it uses.

The paper's COCO setting (γ+ = 0, γ− = 4, m = 0.05); the official PyTorch formulation transcribed
to jnp, a plain log-space formula (both left to JAX's autodiff) and the official formulation in
PyTorch itself.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp

__all__ = [
    "CLIP",
    "EPS",
    "GAMMA_NEG",
    "GAMMA_POS",
    "log_space_asl",
    "official_formulation_asl",
    "torch_asl",
    "torch_available",
]

GAMMA_POS, GAMMA_NEG, CLIP, EPS = 0.0, 4.0, 0.05, 1e-8


def official_formulation_asl(z, y, gamma_pos=GAMMA_POS, gamma_neg=GAMMA_NEG, clip=CLIP, eps=EPS):
    """ASL as the official PyTorch code computes it, in jnp (summed; for autodiff).

    Probabilities from a sigmoid, the negatives' probability shifted with a clamp, logs of
    eps-clamped probabilities, and one `pow` whose exponent is γ+ or γ− per element.
    """
    p = jax.nn.sigmoid(z)
    p_neg = jnp.minimum(1.0 - p + clip, 1.0) if clip > 0 else 1.0 - p
    log_likelihood = y * jnp.log(jnp.maximum(p, eps)) + (1.0 - y) * jnp.log(jnp.maximum(p_neg, eps))
    p_target = p * y + p_neg * (1.0 - y)
    gamma = gamma_pos * y + gamma_neg * (1.0 - y)
    return -jnp.sum(log_likelihood * jnp.power(1.0 - p_target, gamma))


def log_space_asl(z, y, gamma_pos=GAMMA_POS, gamma_neg=GAMMA_NEG, clip=CLIP):
    """ASL written plainly in log space with `jax.nn.log_sigmoid` (summed; for autodiff).

    The same maths as `asl_jax.asymmetric_loss`, left to JAX's autodiff. Python-number γ become
    integer powers, as in our implementation.
    """
    p, q = jax.nn.sigmoid(z), jax.nn.sigmoid(-z)
    loss_pos = -(q**gamma_pos) * jax.nn.log_sigmoid(z)
    shifted = jnp.maximum(p - clip, 0.0)
    loss_neg = -(shifted**gamma_neg) * jnp.log(jnp.minimum(q + clip, 1.0))
    return jnp.sum(y * loss_pos + (1.0 - y) * loss_neg)


def torch_asl(torch, x, y, *, detach: bool):
    """The official formulation in PyTorch (what `official_formulation_asl` transcribes)."""
    p = torch.sigmoid(x)
    p_neg = (1 - p + CLIP).clamp(max=1)
    log_likelihood = y * torch.log(p.clamp(min=EPS)) + (1 - y) * torch.log(p_neg.clamp(min=EPS))
    gamma = GAMMA_POS * y + GAMMA_NEG * (1 - y)
    if detach:
        with torch.no_grad():
            weight = torch.pow(1 - (p * y + p_neg * (1 - y)), gamma)
    else:
        weight = torch.pow(1 - (p * y + p_neg * (1 - y)), gamma)
    return -(log_likelihood * weight).sum()


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None
