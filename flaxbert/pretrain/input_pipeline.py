"""Training and evaluation batches from a prepared dataset (`flaxbert prepare`), exactly resumable.

The dataset is read by random access (`tfds` array_record data source), so the batch at a
step is a pure function of (seed, step):

  epoch e = step // steps_per_epoch; the epoch's order is a permutation keyed by (seed, e),
  evaluated only at the batch's positions (flaxbert.pretrain.order: O(batch) per step);
  global batch `step` is the next `global_batch_size` indices of that order (the remainder of
  an epoch is dropped); process p of P takes rows [p·B/P, (p+1)·B/P) of it.

Resuming is therefore just "start at step N": nothing about the iterator needs saving. With a
dynamic-masking dataset the masks are drawn per example from (seed, epoch, example index):
fresh every epoch, identical on any number of processes or devices. Evaluation reads a split
once, in order, padding the last batch and marking real rows with `example_mask`.

Packing (`max_examples_per_row` > 1; dynamic masking without next-sentence prediction, as
RoBERTa / MosaicBERT): the split's sequences are binned once into rows of max_seq_length tokens
(flaxbert.training.packing.plan over every sequence's length, best-fit decreasing; the lengths come from
the file `flaxbert prepare` writes beside the split, data_prep.format.LENGTHS_FILE, or, for a
dataset without one (written by an older flaxbert), from reading the split once), and "examples" above
become those rows: an epoch permutes the rows, a batch holds `global_batch_size` of them. A row
numbers its sequences in `input_mask` (1, 2, …; 0 = padding), restarts `position_ids` at each, so
each attends only to itself, and holds every sequence's masks (drawn exactly as unpacked, from
the sequence's own index) at offset positions; masked_lm_positions has room for the most
predictions any row of the plan can have.
"""
import concurrent.futures
import dataclasses
import logging
import os
from pathlib import Path
from typing import Iterator

import jax
import numpy as np

from data_prep.format import FEATURES, LENGTHS_FILE, check_shards, corrupt_shard, open_dataset
from data_prep.masking import mask_tokens, num_to_predict
from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.pretrain import order
from flaxbert.text.tokenization import load_tokenizer
from flaxbert.training import packing


@dataclasses.dataclass(frozen=True)
class DynamicMasking:
  """How a dynamic-masking dataset is masked in the pipeline (RoBERTa / MosaicBERT style)."""
  masked_lm_prob: float = 0.15  # e.g. 0.3 as in MosaicBERT
  max_predictions_per_seq: int = 20
  whole_word_mask: bool = False


class PretrainingData:
  """One split of a prepared dataset as fixed-shape numpy batches for this process."""

  def __init__(self, directory: str | os.PathLike, split: str, *, global_batch_size: int, seed: int,
               masking: DynamicMasking | None = None, process_index: int | None = None,
               process_count: int | None = None, prefetch: int = 2, max_examples_per_row: int = 1):
    self.builder = open_dataset(directory)
    if split not in self.builder.info.splits:
      raise InputError(f"{directory}: has no split {split!r}; it has {sorted(self.builder.info.splits)}")
    check_shards(self.builder, split)
    self.split = split
    self.source = self.builder.as_data_source(split=split)
    self.num_examples = len(self.source)
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size < 1 or global_batch_size % self.process_count:
      raise InputError(f"global_batch_size ({global_batch_size}) must be a positive multiple of the "
                       f"number of processes ({self.process_count})")
    self.global_batch_size, self.seed, self.prefetch = global_batch_size, seed, prefetch
    self.local_batch_size = global_batch_size // self.process_count
    metadata = self.builder.info.metadata
    self.dynamic = metadata["settings"]["masking"] == "dynamic"
    self.max_seq_length = metadata["settings"]["max_seq_length"]
    self._masking, self._token_ids, self._continuation = None, None, None
    self.max_predictions = metadata["settings"]["max_predictions_per_seq"]
    if self.dynamic:
      self._setup_dynamic(directory, masking or DynamicMasking(), metadata)
      self.max_predictions = self._masking.max_predictions_per_seq
    self._plan = None  # packed rows: example indices per row
    if max_examples_per_row != 1:
      self._setup_packing(directory, split, max_examples_per_row, metadata["settings"])
    self.num_rows = self.num_examples if self._plan is None else len(self._plan)
    self.steps_per_epoch = self.num_rows // global_batch_size

  def _setup_dynamic(self, directory, masking: DynamicMasking, metadata) -> None:
    self._masking = masking
    self._token_ids = metadata["tokenizer"]
    self._continuation = None
    if masking.whole_word_mask:
      tokenizer = load_tokenizer(directory)
      self._continuation = np.array([tokenizer.is_continuation(t) for t in tokenizer.vocab])

  def _setup_packing(self, directory, split, per_row, settings) -> None:
    if not (isinstance(per_row, int) and per_row >= 1):
      raise InputError(f"max_examples_per_row: expected an integer >= 1, got {per_row!r}")
    if not self.dynamic or settings["random_next_sentence"]:
      raise InputError(f"max_examples_per_row: {per_row}; packing needs a dynamic-masking dataset without "
                       f"next-sentence prediction, and {directory} has masking={settings['masking']!r}, "
                       f"random_next_sentence={settings['random_next_sentence']} (prepare with "
                       "--masking dynamic --no-random_next_sentence, or set max_examples_per_row=1)")
    self._lengths = self._sequence_lengths(storage.path(directory), split)
    self._plan, self._per_row = packing.plan(self._lengths, self.max_seq_length, per_row, self.seed), per_row
    m = self._masking
    counts = num_to_predict(self._lengths, m.masked_lm_prob, m.max_predictions_per_seq)
    self.max_predictions = max([int(counts[r].sum()) for r in self._plan] or [1])

  def _sequence_lengths(self, directory: Path, split: str) -> np.ndarray:
    """[num_examples] int64: each example's token count, from the split's lengths file, else (a
    dataset without one, written by an older flaxbert) by reading every example once."""
    path = self._lengths_path = directory / LENGTHS_FILE.format(split=split)
    if not path.is_file():
      logging.info("%s: no %s (written by an older flaxbert?); reading the %d examples' lengths", directory, path.name,
                   self.num_examples)
      n = self.num_examples
      return np.fromiter((np.asarray(e["input_mask"]).sum() for i in range(0, n, 4096)
                          for e in self._get(list(range(i, min(i + 4096, n))))), np.int64, n)
    try:
      with path.open("rb") as f:
        lengths = np.load(f, allow_pickle=False)
    except (OSError, ValueError) as e:
      raise InputError(f"{path}: not a readable .npy array of example lengths ({e})") from None
    if (lengths.ndim != 1 or lengths.dtype.kind not in "iu" or len(lengths) != self.num_examples
        or (lengths.size and not 1 <= lengths.min() <= lengths.max() <= self.max_seq_length)):
      raise InputError(f"{path}: expected {self.num_examples} integer lengths in [1, {self.max_seq_length}] "
                       f"(one per example of the {split!r} split), got {lengths.dtype} of shape {lengths.shape}"
                       f"{f' in [{lengths.min()}, {lengths.max()}]' if lengths.size else ''}; "
                       "prepare the dataset again")
    return lengths.astype(np.int64)

  # --- training: a pure function of the step ------------------------------------------------

  def _rows(self, step: int) -> tuple[int, np.ndarray]:
    if self.steps_per_epoch == 0:
      packed = "" if self._plan is None else f" ({self.num_examples} sequences packed)"
      raise InputError(f"split has {self.num_rows} examples{packed}, fewer than one global batch "
                       f"({self.global_batch_size})")
    epoch, position = divmod(step, self.steps_per_epoch)
    start = position * self.global_batch_size + self.process_index * self.local_batch_size
    positions = np.arange(start, start + self.local_batch_size)
    return epoch, order.epoch_rows(positions, self.num_rows, self.seed, epoch)  # O(batch), not O(epoch)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`."""
    epoch, rows = self._rows(step)
    return self._read(rows, epoch)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.iterate(0)

  def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches from `start_step` on, read `prefetch` steps ahead in background threads."""
    with concurrent.futures.ThreadPoolExecutor(max(1, self.prefetch)) as pool:
      pending = [pool.submit(self.batch, s) for s in range(start_step, start_step + self.prefetch + 1)]
      step = start_step + self.prefetch + 1
      while True:
        yield pending.pop(0).result()
        pending.append(pool.submit(self.batch, step))
        step += 1

  # --- evaluation: every example exactly once -------------------------------------------------

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """The whole split in order; the last global batch padded, `example_mask` 1 on real rows."""
    for start in range(0, self.num_rows, self.global_batch_size):
      first = start + self.process_index * self.local_batch_size
      rows = np.arange(first, first + self.local_batch_size)
      real = rows < self.num_rows
      batch = self._read(np.where(real, rows, 0), epoch=0)
      for name, value in batch.items():
        batch[name] = np.where(real.reshape((-1,) + (1,) * (value.ndim - 1)), value, 0).astype(value.dtype)
      batch["example_mask"] = real.astype(np.int32)
      yield batch

  # --- reading --------------------------------------------------------------------------------

  def _read(self, rows: np.ndarray, epoch: int) -> dict[str, np.ndarray]:
    if self._plan is not None:
      return self._read_packed(rows, epoch)
    return self._read_examples(rows, epoch)

  def _get(self, indices: list[int]) -> list[dict]:
    """The examples at `indices`; a shard that cannot be read (a block garbled after the up-front
    check_shards) is an InputError naming it."""
    try:
      return self.source.__getitems__(indices)
    except Exception:  # pylint: disable=broad-except  # ArrayRecord raises RuntimeError, TFDS others
      for i in indices:  # which one: read them one by one
        try:
          self.source[i]
        except Exception as e:  # pylint: disable=broad-except
          raise corrupt_shard(self.builder, self.split, i, e) from None
      raise

  def _read_examples(self, rows: np.ndarray, epoch: int) -> dict[str, np.ndarray]:
    examples = self._get([int(r) for r in rows])
    batch = {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}
    batch = {k: v.astype(np.float32 if k == "masked_lm_weights" else np.int32) for k, v in batch.items()}
    if self.dynamic:
      batch.update(self._mask(batch, rows, epoch))
    return {k: batch[k] for k in FEATURES}

  def _read_packed(self, rows: np.ndarray, epoch: int) -> dict[str, np.ndarray]:
    """Packed rows `rows` of the plan: their sequences read and masked as unpacked, laid side by side
    by flaxbert.training.packing.pack; each sequence's masked positions move by its start in the row."""
    members = [self._plan[int(r)] for r in rows]
    seqs = self._read_examples(np.concatenate(members), epoch)
    self._check_lengths(np.concatenate(members), seqs["input_mask"])
    bounds = np.cumsum([0] + [len(m) for m in members])
    local = [np.arange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    packed = packing.pack({k: seqs[k] for k in packing.TOKEN_ARRAYS}, local, self._per_row)
    n, p = len(rows), self.max_predictions
    out = {k: packed[k] for k in (*packing.TOKEN_ARRAYS, "position_ids")}
    out.update(masked_lm_positions=np.zeros((n, p), np.int32), masked_lm_ids=np.zeros((n, p), np.int32),
               masked_lm_weights=np.zeros((n, p), np.float32), next_sentence_labels=np.zeros((n,), np.int32))
    for row, slot in zip(*np.nonzero(packed["label_mask"])):  # row-major: slots in order within a row
      i, start = packed["example_index"][row, slot], packed["cls_positions"][row, slot]
      real = seqs["masked_lm_weights"][i] > 0
      filled, count = int(out["masked_lm_weights"][row].sum()), int(real.sum())
      out["masked_lm_positions"][row, filled:filled + count] = seqs["masked_lm_positions"][i][real] + start
      out["masked_lm_ids"][row, filled:filled + count] = seqs["masked_lm_ids"][i][real]
      out["masked_lm_weights"][row, filled:filled + count] = 1.0
    return out

  def _check_lengths(self, indices: np.ndarray, input_mask: np.ndarray) -> None:
    """The lengths the plan was made from are the examples' own (a lengths file that does not
    belong to the split would otherwise overflow rows)."""
    actual = np.count_nonzero(input_mask, axis=-1)
    wrong = np.flatnonzero(actual != self._lengths[indices])
    if wrong.size:
      i = int(indices[wrong[0]])
      raise InputError(f"{self._lengths_path}: says example {i} of the {self.split!r} split has {self._lengths[i]} "
                       f"tokens, it has {actual[wrong[0]]}; the lengths do not belong to these examples; "
                       "run `flaxbert prepare` again")

  def _mask(self, batch: dict[str, np.ndarray], rows: np.ndarray, epoch: int) -> dict[str, np.ndarray]:
    """Masks drawn per example from (seed, epoch, example index): the same on any batch layout."""
    m, ids = self._masking, self._token_ids
    tokens = batch["input_ids"]
    masked = mask_tokens(
        tokens, None if self._continuation is None else self._continuation[tokens],
        [np.random.default_rng([self.seed, epoch, int(row), 1]) for row in rows],
        masked_lm_prob=m.masked_lm_prob, max_predictions_per_seq=m.max_predictions_per_seq,
        vocab_size=ids["vocab_size"], mask_id=ids["mask_id"],
        special_mask=(tokens == ids["cls_id"]) | (tokens == ids["sep_id"]),
        whole_word_mask=m.whole_word_mask, input_mask=batch["input_mask"])
    return {k: getattr(masked, k) for k in ("input_ids", "masked_lm_positions", "masked_lm_ids",
                                            "masked_lm_weights")}
