"""Where pretraining text comes from: local files or TFDS text datasets, as documents of sentences.

Local files come in two layouts:
  sentence_per_line   the original BERT format: one sentence per line, a blank line between
                      documents (a file's end also ends a document);
  document_per_file   each file is one document; its lines are paragraphs, split into sentences.

Bad input is handled and counted, never silently: a missing path or an empty corpus stops with
an error naming it; empty and binary files are skipped (binary: a NUL byte, or many control
characters, in the first 8 KB); undecodable bytes in text are replaced; over-long lines and
sentences are cut at whitespace. Every file is read once, however many ways it is named (paths
are compared by their real path), and a prepared dataset inside an input folder is skipped, not
read as text. `SourceStats` carries the counts into the dataset. Inputs may be in an object store
(gs://…, flaxbert.storage); there paths are compared as written.
"""
import dataclasses
import os
from pathlib import Path
from typing import Iterable, Iterator

from flaxbert import storage
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
  duplicate_paths: int = 0  # files named more than once (dir, dir/a.txt, ./dir/a.txt), read once
  skipped_datasets: list[str] = dataclasses.field(default_factory=list)  # prepared datasets in input folders

  def merge(self, other: "SourceStats") -> None:
    for field in dataclasses.fields(self):
      setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

  def summary(self) -> str:
    return (f"{self.files} files, {self.documents} documents, {self.sentences} sentences; skipped "
            f"{len(self.empty_files)} empty and {len(self.binary_files)} binary files; "
            f"{self.bad_utf8_lines} lines in {len(self.files_with_bad_utf8)} files had invalid UTF-8 "
            f"(replaced by U+FFFD); {self.cut_sentences} over-long sentences cut"
            + (f"; skipped {len(self.skipped_datasets)} prepared dataset folder(s) inside the input"
               if self.skipped_datasets else "")
            + (f"; {self.duplicate_paths} files named more than once, read once" if self.duplicate_paths else ""))


def list_files(paths: Iterable[str | os.PathLike], stats: SourceStats | None = None) -> list[Path]:
  """Files named, and files below folders named (sorted; hidden ones and prepared datasets
  skipped), each once however often it is named; missing → error. `stats` counts what was skipped."""
  stats = SourceStats() if stats is None else stats
  paths = list(paths)
  files, seen = [], set()
  for p in map(storage.path, paths):
    if p.is_dir():
      found = _folder_files(p, stats)
    elif p.is_file():
      found = [p]
    else:
      raise InputError(f"{p}: no such file or directory")
    for f in found:
      real = str(f) if storage.is_remote(f) else os.path.realpath(f)
      if real in seen:
        stats.duplicate_paths += 1
      else:
        seen.add(real)
        files.append(f)
  if not files:
    skipped = (f" (skipped {len(stats.skipped_datasets)} prepared dataset folder(s): "
               f"{', '.join(stats.skipped_datasets[:3])})" if stats.skipped_datasets else "")
    raise InputError(f"no input files found in {[str(p) for p in paths]}{skipped}")
  return files


def _folder_files(folder: Path, stats: SourceStats) -> list[Path]:
  """The files below `folder`, sorted; hidden files and folders and prepared datasets left out."""
  from data_prep.format import is_prepared  # pylint: disable=import-outside-toplevel
  if storage.is_remote(folder):
    return _remote_folder_files(folder, stats)
  files = []
  for root, dirs, names in os.walk(folder):
    root = Path(root)
    if is_prepared(root):
      stats.skipped_datasets.append(str(root))
      dirs[:] = []
      continue
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    files.extend(root / n for n in names if not n.startswith(".") and (root / n).is_file())
  return sorted(files)


def _remote_folder_files(folder, stats: SourceStats) -> list:
  """`_folder_files` of an object store's folder (no os.walk there)."""
  from data_prep.format import is_prepared  # pylint: disable=import-outside-toplevel
  if is_prepared(folder):
    stats.skipped_datasets.append(str(folder))
    return []
  files = []
  for child in folder.iterdir():
    if child.name.startswith("."):
      continue
    files.extend(_remote_folder_files(child, stats) if child.is_dir() else [child])
  return sorted(files, key=str)


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


def _is_binary(head: bytes) -> bool:
  """A NUL byte, or control characters (other than whitespace) beyond 5% of the bytes: random or
  compressed data has about 10%, text in any 8-bit encoding next to none (so a Latin-1 file is
  text, its undecodable bytes replaced)."""
  controls = sum(head.count(bytes([c])) for c in range(1, 32) if chr(c) not in "\t\n\r\f\v")
  return b"\x00" in head or controls > 0.05 * len(head)


def _lines(path: Path, stats: SourceStats) -> Iterator[str] | None:
  """Decoded lines of a text file; None (and counted) for an empty or binary file."""
  try:
    with path.open("rb") as f:
      head = f.read(_SNIFF_BYTES)
  except OSError as e:
    raise InputError(f"{path}: cannot read the file ({e.strerror or e})") from None
  if not head.strip():
    stats.empty_files.append(str(path))
    return None
  if _is_binary(head):
    stats.binary_files.append(str(path))
    return None

  def gen():
    bad = 0
    try:
      with path.open("rb") as f:
        for raw in f:
          try:
            line = raw.decode("utf-8")
          except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            bad += 1
          yield line.strip()
    except OSError as e:
      raise InputError(f"{path}: cannot read the file ({e.strerror or e})") from None
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
