"""Where pretraining text comes from: local files or TFDS text datasets, as documents of sentences.

Local files come in two layouts:
  sentence_per_line   the original BERT format: one sentence per line, a blank line between
                      documents (a file's end also ends a document);
  document_per_file   each file is one document; its lines are paragraphs, split into sentences.

Bad input is handled and counted, never silently: a missing path or an empty corpus stops with
an error naming it; empty and binary files are skipped; undecodable bytes are replaced; over-long
lines and sentences are cut at whitespace. `SourceStats` carries the counts into the dataset.
"""
import dataclasses
import os
from pathlib import Path
from typing import Iterable, Iterator

from flaxbert.errors import InputError
from flaxbert.text.sentences import split_sentences

FORMATS = ("sentence_per_line", "document_per_file")
MAX_SENTENCE_CHARS = 5_000  # longer "sentences" (a 10 MB line with no newline) are cut at whitespace
_SNIFF_BYTES = 8192


@dataclasses.dataclass
class SourceStats:
  """What was read and what was skipped or repaired; printed at the end and stored with the dataset."""
  files: int = 0
  documents: int = 0
  sentences: int = 0
  empty_files: list[str] = dataclasses.field(default_factory=list)
  binary_files: list[str] = dataclasses.field(default_factory=list)
  files_with_bad_utf8: list[str] = dataclasses.field(default_factory=list)
  bad_utf8_lines: int = 0
  cut_sentences: int = 0

  def merge(self, other: "SourceStats") -> None:
    for field in dataclasses.fields(self):
      setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

  def summary(self) -> str:
    return (f"{self.files} files, {self.documents} documents, {self.sentences} sentences; skipped "
            f"{len(self.empty_files)} empty and {len(self.binary_files)} binary files; "
            f"{self.bad_utf8_lines} lines in {len(self.files_with_bad_utf8)} files had invalid UTF-8 "
            f"(replaced by U+FFFD); {self.cut_sentences} over-long sentences cut")


def list_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
  """Files named, and files below folders named (sorted, hidden ones skipped); missing → error."""
  files = []
  for p in map(Path, paths):
    if p.is_dir():
      files.extend(sorted(f for f in p.rglob("*") if f.is_file()
                          and not any(part.startswith(".") for part in f.relative_to(p).parts)))
    elif p.is_file():
      files.append(p)
    else:
      raise InputError(f"{p}: no such file or directory")
  if not files:
    raise InputError(f"no input files found in {[str(p) for p in paths]}")
  return files


def _cut(sentence: str, stats: SourceStats) -> list[str]:
  if len(sentence) <= MAX_SENTENCE_CHARS:
    return [sentence]
  stats.cut_sentences += 1
  pieces, rest = [], sentence
  while len(rest) > MAX_SENTENCE_CHARS:
    cut = rest.rfind(" ", 0, MAX_SENTENCE_CHARS)
    cut = cut if cut > 0 else MAX_SENTENCE_CHARS
    pieces.append(rest[:cut].strip())
    rest = rest[cut:]
  pieces.append(rest.strip())
  return [p for p in pieces if p]


def _lines(path: Path, stats: SourceStats) -> Iterator[str] | None:
  """Decoded lines of a text file; None (and counted) for an empty or binary file."""
  with open(path, "rb") as f:
    head = f.read(_SNIFF_BYTES)
  if not head.strip():
    stats.empty_files.append(str(path))
    return None
  if b"\x00" in head:
    stats.binary_files.append(str(path))
    return None

  def gen():
    bad = 0
    with open(path, "rb") as f:
      for raw in f:
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError:
          line = raw.decode("utf-8", errors="replace")
          bad += 1
        yield line.strip()
    if bad:
      stats.bad_utf8_lines += bad
      stats.files_with_bad_utf8.append(str(path))
  return gen()


def read_file(path: Path, fmt: str, stats: SourceStats) -> Iterator[list[str]]:
  """Documents (lists of sentences) of one local file."""
  if fmt not in FORMATS:
    raise InputError(f"input_format must be one of {FORMATS}, got {fmt!r}")
  lines = _lines(path, stats)
  if lines is None:
    return
  stats.files += 1
  doc: list[str] = []
  for line in lines:
    if not line:
      if fmt == "sentence_per_line" and doc:
        yield _count(doc, stats)
        doc = []
      continue
    parts = [line] if fmt == "sentence_per_line" else split_sentences(line)
    for part in parts:
      doc.extend(_cut(part, stats))
  if doc:
    yield _count(doc, stats)


def _count(doc: list[str], stats: SourceStats) -> list[str]:
  stats.documents += 1
  stats.sentences += len(doc)
  return doc


def read_tfds(name: str, split: str, text_feature: str, data_dir: str | None, stats: SourceStats
              ) -> Iterator[list[str]]:
  """Documents from a TFDS text dataset that is already prepared locally (e.g. wikipedia)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several unrelated types for unknown names
    raise InputError(f"TFDS dataset {name!r}: cannot be opened ({e.__class__.__name__}: {e})") from None
  if not builder.is_prepared():
    raise InputError(f"TFDS dataset {name!r} is not prepared under {builder.data_dir}; build it first "
                     "(`tfds build`), this tool does not download")
  if text_feature not in builder.info.features:
    raise InputError(f"TFDS dataset {name!r} has no feature {text_feature!r}; it has "
                     f"{sorted(builder.info.features)}")
  source = builder.as_data_source(split=split)
  for i in range(len(source)):
    text = source[i][text_feature]
    text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
    doc = [s for para in text.split("\n") for sent in split_sentences(para.strip()) for s in _cut(sent, stats)]
    if doc:
      yield _count(doc, stats)
