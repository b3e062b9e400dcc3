"""What every task family provides to the fine-tuning loop, and the BERT input layout they share.

A task turns files into examples (`read`), examples into fixed-shape feature arrays (`featurize`;
one example may give several features, e.g. SQuAD windows), says how its head's outputs make a
loss (`loss_sums`, as sums with a denominator so that padded rows and gradient accumulation stay
exact), and turns the outputs of every feature back into per-example predictions and scores
(`predict`, `score`). Labels learnt from the training file travel in `state()` (W/task.json), so
`evaluate` and `predict` read the same label ids the model was trained with.
"""
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.atomic import atomic_file
from flaxbert.errors import InputError
from flaxbert.losses import token_cross_entropy

log = logging.getLogger("flaxbert")


@dataclasses.dataclass
class Features:
  """arrays: name → [N, …] numpy arrays (N features); meta: whatever post-processing needs."""
  arrays: dict[str, np.ndarray]
  meta: Any = None

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))


class Task:
  """The base of the task families; subclasses set `head` and implement the methods below."""
  head: str = ""
  prediction_file: str = "predictions.jsonl"
  packed = False  # True: featurize's per-example rows are packed for the model (flaxbert.packing)
  token_arrays: dict = {}  # packed tasks: feature arrays aligned with the wordpieces → their padding value
  token_outputs: dict = {}  # packed tasks: head outputs aligned with the wordpieces ([B, T, …]) → the
  #   value they take past an example's end once unpacked

  def __init__(self, config):
    self.config = config

  # --- data ---
  def read(self, path: str, split: str | None, training: bool) -> list:
    raise NotImplementedError

  def fit(self, train: Sequence, evals: Sequence[tuple[str, Sequence]]) -> None:
    """Learns what the training data defines (label sets) and checks all data against it."""
    self.learn(train)
    self.check([("train", train), *evals])

  def learn(self, train: Sequence) -> None:
    """Learns the label set (tasks whose labels come from the training file)."""

  def check(self, sets: Sequence[tuple[str, Sequence]]) -> None:
    """Raises InputError naming file:line for data the learnt state cannot represent."""

  def state(self) -> dict:
    return {}

  def load_state(self, state: dict) -> None:
    del state

  def featurize(self, examples: Sequence, tokenizer, training: bool) -> Features:
    raise NotImplementedError

  @property
  def num_outputs(self) -> int:
    return 1

  # --- loss (inside jit) ---
  def loss_sums(self, outputs: dict, batch: dict) -> dict:
    """{"task_loss_sum": …, "task_count": …} over the batch, padded rows (example_mask 0) excluded."""
    raise NotImplementedError

  def counts(self, batch: dict) -> dict:
    """{"task_count": …}: the denominator of the whole batch, from the batch alone (the real
    examples: of packed rows' slots, or of the rows)."""
    return {"task_count": jnp.sum(slot_weights(batch) if self.packed else rows(batch))}

  # --- results (host) ---
  def predict(self, examples: Sequence, features: Features, outputs: dict[str, np.ndarray]) -> list:
    raise NotImplementedError

  def score(self, examples: Sequence, features: Features, outputs: dict[str, np.ndarray], predictions) -> dict:
    """Metrics of one labelled file; `predictions` is `predict`'s result for the same outputs
    (computed once by the caller, which also writes it)."""
    raise NotImplementedError

  def write_predictions(self, path: Path, examples: Sequence, predictions: list) -> None:
    """One JSON object per example (guid and prediction), written atomically."""
    with atomic_file(path) as tmp:
      with open(tmp, "w", encoding="utf-8") as f:
        for example, prediction in zip(examples, predictions):
          f.write(json.dumps({"id": example.guid, "prediction": prediction}, ensure_ascii=False) + "\n")


def rows(batch: dict) -> jax.Array:
  """Per-row weights: 1 for real examples, 0 for the padding of a last partial batch."""
  n = batch["input_ids"].shape[0]
  return batch.get("example_mask", jnp.ones((n,), jnp.int32)).astype(jnp.float32)


def slot_weights(batch: dict) -> jax.Array:
  """[B, K] weights of a packed batch (flaxbert.packing): 1 at each real example of a row, 0 at
  empty slots and in the padding rows of a last batch."""
  return batch["label_mask"].astype(jnp.float32) * rows(batch)[:, None]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-log softmax(logits)[label] in float32 (flaxbert.losses.token_cross_entropy); labels < 0 are
  read as label 0 (masked by the caller)."""
  return token_cross_entropy(logits, jnp.maximum(labels, 0))[0]


# --- the BERT input layout -----------------------------------------------------------------------


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


def existing(path: str | os.PathLike | None, field: str) -> str:
  if not path:
    raise InputError(f"{field}: required")
  if str(path).startswith("tfds:"):  # flaxbert.tasks.tfds_source
    return str(path)
  if not Path(path).is_file():
    raise InputError(f"{field}: {path}: no such file")
  return str(path)
