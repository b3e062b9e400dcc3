"""Activation functions by their BertConfig.hidden_act name, with BERT's exact GELU as a fused op."""
from typing import Callable

import jax
import jax.numpy as jnp


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
  """BERT's exact GELU, x·Φ(x), whose backward pass keeps only x.

  Differentiating `jax.nn.gelu` through autodiff keeps erf's result as well as x for the backward
  pass: with B·T·intermediate_size elements per layer (100M for base at batch 256, seq 128) that
  is one more full-size tensor written and read per layer. Here the backward pass recomputes
  Φ(x) and φ(x) from x (float32), so the forward pass writes x and the output only.
  """
  return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
  return jax.nn.gelu(x, approximate=False), x


def _gelu_bwd(x, g):
  xf = x.astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(xf * 0.7071067811865476))
  pdf = jnp.exp(-0.5 * xf * xf) * 0.3989422804014327
  return ((g.astype(jnp.float32) * (cdf + xf * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  return _ACTIVATIONS[name]
