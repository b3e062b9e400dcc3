"""The BERT input layout the encoder task families share, and their loss helpers.

`[CLS] a [SEP] b [SEP]` rows (`pack_pair`, with the original's longest-first truncation
`truncate_pair`), the special ids (`Specials`), feature arrays (`Features`), per-row and per-slot
weights of padded and packed batches (`rows`, `slot_weights`), and cross-entropy over labels.
"""
import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.models.losses import token_cross_entropy


@dataclasses.dataclass
class Features:
  """arrays: name → [N, …] numpy arrays (N features); meta: whatever post-processing needs."""
  arrays: dict[str, np.ndarray]
  meta: Any = None

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))


def rows(batch: dict) -> jax.Array:
  """Per-row weights: 1 for real examples, 0 for the padding of a last partial batch."""
  n = batch["input_ids"].shape[0]
  return batch.get("example_mask", jnp.ones((n,), jnp.int32)).astype(jnp.float32)


def slot_weights(batch: dict) -> jax.Array:
  """[B, K] weights of a packed batch (flaxbert.training.packing): 1 at each real example of a row, 0 at
  empty slots and in the padding rows of a last batch."""
  return batch["label_mask"].astype(jnp.float32) * rows(batch)[:, None]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-log softmax(logits)[label] in float32 (flaxbert.models.losses.token_cross_entropy); labels < 0 are
  read as label 0 (masked by the caller)."""
  return token_cross_entropy(logits, jnp.maximum(labels, 0))[0]


def softmax(logits) -> np.ndarray:
  """Host-side softmax over the last axis, in float64 (prediction files' probabilities)."""
  logits = np.asarray(logits, np.float64)
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Specials:
  cls: int
  sep: int
  pad: int

  @classmethod
  def of(cls, tokenizer) -> "Specials":
    c, s, p = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", "[PAD]"])
    return cls(c, s, p)


def truncate_pair(a: list, b: list | None, max_tokens: int) -> bool:
  """The original's _truncate_seq_pair: pops from the longer side until both fit, from `b` when the
  two are equally long (as run_classifier.py and HF's longest_first do); True if cut."""
  cut = False
  while len(a) + (len(b) if b else 0) > max_tokens:
    cut = True
    if b and len(b) >= len(a):
      b.pop()
    else:
      a.pop()
  return cut


def pack_pair(a: Sequence[int], b: Sequence[int] | None, specials: Specials, length: int) -> tuple:
  """[CLS] a [SEP] (b [SEP]) padded to `length`: (input_ids, segment_ids, input_mask) lists."""
  ids = [specials.cls, *a, specials.sep]
  segments = [0] * len(ids)
  if b is not None:
    ids += [*b, specials.sep]
    segments += [1] * (len(b) + 1)
  if len(ids) > length:
    raise ValueError(f"pack_pair: {len(ids)} tokens exceed length {length}")
  mask = [1] * len(ids)
  pad = length - len(ids)
  return ids + [specials.pad] * pad, segments + [0] * pad, mask + [0] * pad


def stack(rows_: Sequence[Sequence[int]], dtype=np.int32) -> np.ndarray:
  return np.asarray(rows_, dtype=dtype).reshape(len(rows_), -1) if rows_ else np.zeros((0, 0), dtype)
