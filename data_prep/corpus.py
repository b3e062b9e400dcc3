"""Stage 1 of a build: text documents → tokenized chunks on disk, with bounded memory.

Documents stream from `sources`, are tokenized in large batches (the tokenizer's batched,
multi-threaded path) and are gathered into chunks of about `chunk_tokens` tokens, each saved as
one `.npz` in `instances.Corpus` layout. Every k-th document (k = round(1/validation_fraction),
the first one included) goes to the validation chunks instead. Stage 2 (builder.py) turns each
chunk into a shard, so no stage ever holds more than a chunk of the corpus.
"""
import dataclasses
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from data_prep import sources
from data_prep.instances import Corpus
from flaxbert.errors import InputError

_BATCH_SENTENCES = 16_384  # sentences per tokenizer call


@dataclasses.dataclass
class Chunks:
  """Paths of the chunk files of each split, and what went into them."""
  train: list[Path] = dataclasses.field(default_factory=list)
  validation: list[Path] = dataclasses.field(default_factory=list)
  tokens: int = 0
  stats: sources.SourceStats = dataclasses.field(default_factory=sources.SourceStats)


class _ChunkWriter:
  """Accumulates tokenized documents; writes a chunk file whenever `chunk_tokens` is reached."""

  def __init__(self, directory: Path, prefix: str, chunk_tokens: int, paths: list[Path]):
    self._dir, self._prefix, self._limit, self._paths = directory, prefix, chunk_tokens, paths
    self._segments: list[np.ndarray] = []
    self._doc_segments: list[int] = []
    self._tokens = 0

  def add(self, document: list[np.ndarray]) -> None:
    segments = [s for s in document if s.size]
    if not segments:
      return
    self._segments.extend(segments)
    self._doc_segments.append(len(segments))
    self._tokens += sum(s.size for s in segments)
    if self._tokens >= self._limit:
      self.flush()

  def flush(self) -> None:
    if not self._doc_segments:
      return
    path = self._dir / f"{self._prefix}-{len(self._paths):05d}.npz"
    lengths = np.fromiter((s.size for s in self._segments), np.int64, len(self._segments))
    np.savez(path, tokens=np.concatenate(self._segments).astype(np.int32),
             segment_bounds=np.concatenate([[0], np.cumsum(lengths)]),
             document_bounds=np.concatenate([[0], np.cumsum(self._doc_segments)]),
             document_ids=np.arange(len(self._doc_segments), dtype=np.int64))
    self._paths.append(path)
    self._segments, self._doc_segments, self._tokens = [], [], 0


def load_chunk(path: Path) -> Corpus:
  with np.load(path) as f:
    return Corpus(tokens=f["tokens"], segment_bounds=f["segment_bounds"],
                  document_bounds=f["document_bounds"], document_ids=f["document_ids"])


def _batches(documents: Iterable[list[str]]) -> Iterator[list[list[str]]]:
  batch, count = [], 0
  for doc in documents:
    batch.append(doc)
    count += len(doc)
    if count >= _BATCH_SENTENCES:
      yield batch
      batch, count = [], 0
  if batch:
    yield batch


def tokenize_documents(documents: Iterable[list[str]], tokenizer, directory: Path, *,
                       chunk_tokens: int, validation_fraction: float) -> Chunks:
  """Tokenizes a stream of documents into train/validation chunk files under `directory`."""
  if not 0.0 < validation_fraction < 1.0:
    raise InputError(f"validation_fraction: expected a number in (0, 1), got {validation_fraction!r}")
  every = max(2, round(1.0 / validation_fraction))
  chunks = Chunks()
  writers = {"train": _ChunkWriter(directory, "train", chunk_tokens, chunks.train),
             "validation": _ChunkWriter(directory, "validation", chunk_tokens, chunks.validation)}
  index = 0
  for batch in _batches(documents):
    flat = [sentence for doc in batch for sentence in doc]
    ids = tokenizer.encode_batch(flat)
    start = 0
    for doc in batch:
      segments = [np.asarray(x, np.int32) for x in ids[start:start + len(doc)]]
      start += len(doc)
      chunks.tokens += sum(s.size for s in segments)
      writers["validation" if index % every == 0 else "train"].add(segments)
      index += 1
  for writer in writers.values():
    writer.flush()
  if not chunks.train:
    raise InputError(f"the corpus has {index} non-empty document(s): too few for a train split "
                     f"beside the validation split (every {every}th document); add text or raise "
                     "validation_fraction")
  return chunks
