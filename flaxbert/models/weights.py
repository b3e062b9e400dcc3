"""Weights carried from one parameter tree into another, every shape checked.

One routine serves every place where a tree is filled from, or checked against, another: the
fine-tuning model's encoder taken from a pretrained checkpoint, the BERT2BERT warm start
(flaxbert.models.warm_start), and the parameter check before a model is saved
(flaxbert.interop). Trees are addressed by "/"-joined keys (`bert/encoder/layer_0/attention/query/kernel`,
jax.tree_util.keystr with separator "/").

`take(target, source, where, …)` returns the source arrays for the target's leaves as a flat
{key: array} dict (a pytree jit takes as an argument, so loaded weights can be merged inside a
jitted, sharded init); `merge(fresh, taken)` puts them into a freshly initialised tree.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.errors import InputError

# Tensors whose first axis is the vocabulary: a mismatch there means another vocabulary.
_VOCAB_KEYS = ("word_embeddings/embedding", "predictions/bias")


def key(path) -> str:
  """A jax key path as "/"-joined names: ('bert', 'encoder', …) → "bert/encoder/…"."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def flat(tree) -> dict:
  """{"/"-joined key: leaf} of a tree."""
  return {key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def take(target, source, where: str, source_key: Callable[[str], str | None] = lambda k: k,
         optional: Callable[[str], bool] = lambda k: False, strict: bool = False) -> dict:
  """{target key: the source's array} for every leaf of `target` (arrays or shapes).

  source_key(target key) → the key to read in `source`, or None for a leaf the source never
  provides (it keeps its fresh value). A leaf `optional` says may be absent is skipped when the
  source lacks it; any other absent leaf, or one of another shape, is an InputError naming both
  keys and shapes. strict: a source leaf that no target leaf reads is an error too.
  """
  want, have = flat(target), flat(source)
  taken, read = {}, set()
  for k, leaf in want.items():
    src = source_key(k)
    if src is None:
      continue
    read.add(src)
    model = "" if src == k else f", for the model's {k}"
    if src not in have:
      if optional(k):
        continue
      raise InputError(f"{where}: missing {src} (expected shape {tuple(leaf.shape)}{model})")
    got = tuple(np.shape(have[src]))
    if got != tuple(leaf.shape):
      hint = ""
      if src.endswith(_VOCAB_KEYS):
        hint = f"; the checkpoint's vocab_size is {got[0]}, the model's {leaf.shape[0]}"
      raise InputError(f"{where}: {src} has shape {got}, expected {tuple(leaf.shape)}{model}{hint}")
    taken[k] = have[src]
  extra = sorted(set(have) - read) if strict else []
  if extra:
    raise InputError(f"{where}: unexpected {extra[0]} (shape {tuple(np.shape(have[extra[0]]))})"
                     + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
  return taken


def merge(fresh, taken: dict):
  """`fresh` with the leaves `take` returned put in (cast to the fresh leaves' dtypes); runs
  inside a jitted init as well as on host arrays."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.asarray(taken[key(path)], leaf.dtype) if key(path) in taken else leaf, fresh)
