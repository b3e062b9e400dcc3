"""Stage 1 of a build: text documents → text chunks on disk, with bounded memory.

Documents stream from `sources` and are gathered into chunks of about `chunk_chars` characters,
each saved as a UTF-8 text file (one sentence per line, a blank line between documents). Every
k-th document (k = round(1/validation_fraction), the first one included) goes to the validation
chunks instead. Stage 2 (builder.py) tokenizes each chunk in a worker process and turns it into
shards, so no process ever holds more than a chunk of the corpus.
"""
import dataclasses
from pathlib import Path
from typing import Iterable

import numpy as np

from data_prep import sources
from data_prep.instances import Corpus
from flaxbert.errors import InputError


@dataclasses.dataclass
class Chunks:
  """Paths of the chunk files of each split, and what went into them."""
  train: list[Path] = dataclasses.field(default_factory=list)
  validation: list[Path] = dataclasses.field(default_factory=list)
  stats: sources.SourceStats = dataclasses.field(default_factory=sources.SourceStats)
  documents: dict[str, int] = dataclasses.field(default_factory=dict)  # per split


class _ChunkWriter:
  """Appends documents to the current chunk file; starts a new one past `chunk_chars`.

  A chunk is closed only once it holds two documents, and a last chunk of one document joins the
  chunk before it (`finish`): next-sentence prediction draws its random B segments from the other
  documents of the chunk, so a document is alone in its chunk only when it is alone in its split.
  """

  def __init__(self, directory: Path, prefix: str, chunk_chars: int, paths: list[Path]):
    self._dir, self._prefix, self._limit, self._paths = directory, prefix, chunk_chars, paths
    self._file, self._chars, self._documents = None, 0, 0
    self.documents = 0  # in the whole split

  def add(self, document: list[str]) -> None:
    if self._file is None:
      path = self._dir / f"{self._prefix}-{len(self._paths):05d}.txt"
      self._paths.append(path)
      self._file = open(path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    text = "\n".join(document) + "\n\n"
    self._file.write(text)
    self._chars += len(text)
    self._documents += 1
    self.documents += 1
    if self._chars >= self._limit and self._documents >= 2:
      self.close()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    self._file, self._chars, self._documents = None, 0, 0

  def finish(self) -> None:
    alone = self._file is not None and self._documents == 1
    self.close()
    if alone and len(self._paths) > 1:
      last = self._paths.pop()
      with open(self._paths[-1], "a", encoding="utf-8") as previous:
        previous.write(last.read_text(encoding="utf-8"))
      last.unlink()


def split_documents(documents: Iterable[list[str]], directory: Path, *, chunk_chars: int,
                    validation_fraction: float, source: str = "the corpus") -> Chunks:
  """Writes a stream of documents into train/validation chunk files under `directory`; `source`
  names the input in errors."""
  if not 0.0 < validation_fraction < 1.0:
    raise InputError(f"validation_fraction: expected a number in (0, 1), got {validation_fraction!r}")
  every = max(2, round(1.0 / validation_fraction))
  chunks = Chunks()
  writers = {"train": _ChunkWriter(directory, "train", chunk_chars, chunks.train),
             "validation": _ChunkWriter(directory, "validation", chunk_chars, chunks.validation)}
  index = 0
  try:
    for doc in documents:
      writers["validation" if index % every == 0 else "train"].add(doc)
      index += 1
  except BaseException:
    for writer in writers.values():
      writer.close()
    raise
  for writer in writers.values():
    writer.finish()
  chunks.documents = {split: writer.documents for split, writer in writers.items()}
  if not chunks.train:
    raise InputError(f"{source}: {index} non-empty document(s), too few for a train split beside "
                     f"the validation split (every {every}th document, the first included, is held out)")
  return chunks


def tokenize_chunk(path: Path, tokenizer) -> Corpus | None:
  """A chunk file's documents as token ids, in `instances.Corpus` layout (empty sentences dropped);
  None when nothing in it has a token."""
  documents = [d.split("\n") for d in path.read_text(encoding="utf-8").split("\n\n") if d]
  ids = tokenizer.encode_batch([s for d in documents for s in d])
  lengths = np.fromiter(map(len, ids), np.int64, len(ids))
  keep = lengths > 0
  doc_of = np.repeat(np.arange(len(documents)), [len(d) for d in documents])[keep]
  per_doc = np.bincount(doc_of, minlength=len(documents))
  kept_docs = per_doc > 0
  if not kept_docs.any():
    return None
  return Corpus(tokens=np.fromiter((t for x in ids for t in x), np.int32, int(lengths.sum())),
                segment_bounds=np.concatenate([[0], np.cumsum(lengths[keep])]),
                document_bounds=np.concatenate([[0], np.cumsum(per_doc[kept_docs])]),
                document_ids=np.flatnonzero(kept_docs).astype(np.int64))
