"""Readers that turn user files into plain example records; every error names the file and line.

- GLUE TSVs: flaxbert.finetune.tasks.glue_tsv (GLUE_FORMATS, read_glue), on this module's file access.
- Tables of custom data (read_table, read_pairs): `.tsv` / `.csv` with a header row naming the
  columns, or `.jsonl` with one JSON object a line; texts and labels are picked by column name.
- CoNLL-style token files (read_conll): `token … tag` a line, blank lines between sentences.

Examples carry their source as "path:line" so that later checks (e.g. check_labels) can point at it.
"""
import csv
import dataclasses
import gzip
import json
import logging
import math
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from flaxbert import storage
from flaxbert.errors import InputError

log = logging.getLogger("flaxbert")


@dataclasses.dataclass(frozen=True)
class TextExample:
  """One sentence or sentence pair; label is a class name (str), class names (tuple: multi-label), a
  score (float) or None (unlabelled)."""
  guid: str
  text_a: str
  text_b: str | None
  label: str | tuple[str, ...] | float | None
  source: str  # "path:line"


@dataclasses.dataclass(frozen=True)
class TaggedExample:
  """One sentence of a CoNLL file; tags is None for a file of tokens only."""
  guid: str
  words: tuple[str, ...]
  tags: tuple[str, ...] | None
  source: str  # "path:line" of the sentence's first token


@dataclasses.dataclass
class ReadReport:
  """What a reader that may skip rows kept and skipped (reason → count; the ids of skipped items
  that have one, e.g. SQuAD question ids)."""
  path: str
  examples: int = 0
  skipped: int = 0
  reasons: dict[str, int] = dataclasses.field(default_factory=dict)
  skipped_ids: list[str] = dataclasses.field(default_factory=list)

  def skip(self, reason: str, item_id: str | None = None) -> None:
    self.skipped += 1
    self.reasons[reason] = self.reasons.get(reason, 0) + 1
    if item_id is not None:
      self.skipped_ids.append(item_id)


# --- file access ---------------------------------------------------------------------------------


def _open_text(path):
  """A text stream of the file, gunzipped when its name ends in .gz (UTF-8, an optional BOM dropped)."""
  if str(path).endswith(".gz"):
    return gzip.open(storage.path(path).open("rb"), "rt", encoding="utf-8-sig")
  return storage.path(path).open("r", encoding="utf-8-sig")


def _bad_byte_line(path) -> int:
  data = storage.path(path).read_bytes()
  data = gzip.decompress(data) if str(path).endswith(".gz") else data
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    return data[:e.start].count(b"\n") + 1
  return 1


def text_lines(path) -> Iterator[str]:
  """The file's lines (UTF-8, an optional BOM dropped, universal newlines; .gz files gunzipped)."""
  try:
    with _open_text(path) as f:
      yield from f
  except UnicodeDecodeError as e:
    raise InputError(f"{path}:{_bad_byte_line(path)}: expected UTF-8 text ({e.reason})") from None
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a truncated .gz an EOFError
    raise InputError(f"{path}: cannot read the file ({getattr(e, 'strerror', None) or e})") from None


def delimited_rows(path, delimiter: str, quoting: bool) -> Iterator[tuple[int, list[str]]]:
  """(line, cells) of each non-blank row; a quoted (CSV) row spanning lines gets its first line."""
  if quoting:
    reader = csv.reader(text_lines(path), delimiter=delimiter)
  else:
    reader = csv.reader(text_lines(path), delimiter=delimiter, quotechar=None, quoting=csv.QUOTE_NONE)
  line = 1
  try:
    for row in reader:
      if row and not (len(row) == 1 and not row[0].strip()):
        yield line, row
      line = reader.line_num + 1
  except csv.Error as e:
    raise InputError(f"{path}:{line}: {e}") from None


def column_error(path, line: int, names: Sequence[str], got: int, delimiter: str = "\t") -> InputError:
  kind = "tab-separated" if delimiter == "\t" else "comma-separated"
  return InputError(f"{path}:{line}: expected {len(names)} {kind} columns ({', '.join(names)}), got {got}")


# --- custom tables: .tsv / .csv / .jsonl ---------------------------------------------------------

_GUID_KEYS = ("id", "idx", "guid")


def _label_text(value) -> str:
  return value if isinstance(value, str) else json.dumps(value)


def _table_rows(path, required: Sequence[str], optional: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
  """(line, {name: cell}) of a .tsv / .csv file with a header row: the `required` columns and those
  of `optional` that the header has."""
  delimiter = "\t" if str(path).endswith(".tsv") else ","
  rows = delimited_rows(path, delimiter, quoting=delimiter == ",")
  first = next(rows, None)
  if first is None:
    raise InputError(f"{path}:1: empty file; expected a header row naming the columns")
  header_line, header = first
  header = [c.strip() for c in header]
  index = {}
  for name in [*required, *optional]:
    if name not in header and name in required:
      raise InputError(f"{path}:{header_line}: expected a column {name!r} in the header row, "
                       f"which has {header}")
    if header.count(name) > 1:
      raise InputError(f"{path}:{header_line}: column {name!r} appears {header.count(name)} times in the header")
    if name in header:
      index[name] = header.index(name)
  for line, row in rows:
    if len(row) != len(header):
      raise column_error(path, line, header, len(row), delimiter)
    yield line, {name: row[i] for name, i in index.items()}


def jsonl_rows(path) -> Iterator[tuple[int, dict]]:
  for line, text in enumerate(text_lines(path), 1):
    if not text.strip():
      continue
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      raise InputError(f"{path}:{line}: expected one JSON object a line ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
      raise InputError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
    yield line, record


def read_table(path, text_a: str, text_b: str | None, label: str | None, labelled: bool | None = None,
               multi_label: bool = False, delimiter: str | None = None) -> list[TextExample]:
  """Examples from a .tsv / .csv (header row) or .jsonl file, texts and label picked by column name.

  The text columns must exist. labelled=True: the label column must exist and every row needs a
  label (training and evaluation files); None: a label column missing from the header (or a label
  key missing from the first JSON line) makes an unlabelled file (label None, for prediction).
  Labels are kept as text (JSON numbers as written: 1 → "1"). With `multi_label` a label is a
  tuple of class names: a JSON list (a list value in JSONL, its JSON text in a CSV/TSV cell) or,
  with `delimiter`, the cell split on it. An "id" / "idx" / "guid" column, if present, gives the guids.
  """
  path_text = str(path)
  if not path_text.endswith((".tsv", ".csv", ".jsonl")):
    raise InputError(f"{path}: expected a .tsv, .csv or .jsonl file")
  jsonl = path_text.endswith(".jsonl")
  texts = [text_a] + ([text_b] if text_b else [])
  required = texts + ([label] if labelled and label else [])
  rows = jsonl_rows(path) if jsonl else _table_rows(path, required, [*([label] if label else []), *_GUID_KEYS])
  stem, examples, first_line = Path(path).stem, [], 0
  for line, record in rows:
    for name in texts:
      if name not in record:
        raise InputError(f"{path}:{line}: missing the text key {name!r} (the object has {sorted(record)})")
      value = record[name]
      if value is None:
        raise InputError(f"{path}:{line}: {name!r} is null; expected a string (the text)")
      if not isinstance(value, str):
        raise InputError(f"{path}:{line}: expected a string for {name!r}, got {json.dumps(value)[:80]}")
    value = record.get(label) if label else None
    if labelled is None:
      labelled, first_line = value is not None, line
    if (value is not None) != labelled:
      if not first_line:  # labelled was asked for
        raise InputError(f"{path}:{line}: missing the label {label!r} (training and evaluation files need one "
                         "on every line)")
      state = "has one" if labelled else "has none"
      raise InputError(f"{path}:{line}: {'missing' if labelled else 'unexpected'} label {label!r} "
                       f"(line {first_line} {state}; a file is either all labelled or all unlabelled)")
    if value is not None:
      value = _label_value(value, multi_label, delimiter, f"{path}:{line}", label)
    guid = next((_label_text(record[k]) for k in _GUID_KEYS if record.get(k) not in (None, "")), f"{stem}-{line}")
    examples.append(TextExample(guid, record[text_a], record[text_b] if text_b else None, value,
                                f"{path}:{line}"))
  if not examples:
    raise InputError(f"{path}: no examples")
  return examples


def _label_value(value, multi_label: bool, delimiter: str | None, where: str, column: str) -> str | tuple[str, ...]:
  """A cell's label: its text, or with `multi_label` the tuple of its class names."""
  if not multi_label:
    if isinstance(value, (dict, list)) or not _label_text(value).strip():
      raise InputError(f"{where}: expected a label in column {column!r}, got {json.dumps(value)[:80]}")
    return _label_text(value).strip()
  if isinstance(value, str) and delimiter:
    names = value.split(delimiter) if value.strip() else [""]
  else:
    if isinstance(value, str):
      try:
        value = json.loads(value)
      except json.JSONDecodeError:
        raise InputError(f"{where}: expected a JSON list of labels in column {column!r} (or name "
                         f"label_delimiter), got {value[:80]!r}") from None
    if not isinstance(value, list):
      raise InputError(f"{where}: expected a JSON list of labels in column {column!r}, got {json.dumps(value)[:80]}")
    names = value
  if any(not isinstance(n, (str, int)) or isinstance(n, bool) or not str(n).strip() for n in names):
    raise InputError(f"{where}: empty or non-text label in column {column!r}: {json.dumps(value)[:80]}")
  return tuple(dict.fromkeys(str(n).strip() for n in names))


def read_pairs(path, text_a: str, text_b: str, score: str | None) -> list[TextExample]:
  """Sentence pairs with a similarity score (float; None in an unlabelled file), as read_table reads."""
  if not text_b:
    raise InputError(f"read_pairs {path}: the second text's column must be named")
  return [with_score(e, score) for e in read_table(path, text_a, text_b, score)]


def with_score(example: TextExample, column: str) -> TextExample:
  """The example with its label read as a finite number (a score); the error names file:line and column."""
  if example.label is None or isinstance(example.label, float):
    return example
  try:
    value = float(example.label)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise InputError(f"{example.source}: expected a number for the score in column {column!r}, got {example.label!r}")
  return dataclasses.replace(example, label=value)


def check_labels(train_labels: Iterable, eval_labels: Iterable, train_source: str, eval_source: str) -> None:
  """Raises InputError if an evaluation label (None ignored) never occurs among the training labels."""
  known = {str(x) for x in train_labels if x is not None}
  unknown = sorted({str(x) for x in eval_labels if x is not None} - known)
  if unknown:
    raise InputError(f"{eval_source}: label(s) {unknown} do not occur in the training data {train_source} "
                     f"(its labels: {sorted(known)})")


# --- CoNLL ---------------------------------------------------------------------------------------


def _is_tag(tag: str) -> bool:
  return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-", "E-", "S-"))


def read_conll(path) -> list[TaggedExample]:
  """Sentences of a CoNLL-style file: token first, tag last (tab- or space-separated; WNUT-17's
  `token<TAB>tag`, CoNLL-2003's `token POS chunk tag`), blank lines between sentences, -DOCSTART-
  lines skipped. A file of bare tokens (one column) gives tags None. Tags are O or B-/I-/E-/S-<type>.
  """
  stem, examples = Path(path).stem, []
  words: list[str] = []
  tags: list[str] = []
  start, tagged, tagged_line = 0, None, 0

  def flush() -> None:
    if words:
      examples.append(TaggedExample(f"{stem}-{start}", tuple(words), tuple(tags) if tagged else None,
                                    f"{path}:{start}"))
      words.clear(), tags.clear()

  for line, text in enumerate(text_lines(path), 1):
    text = text.strip("\r\n\t ")
    if not text:
      flush()
      continue
    fields = [f for f in text.split("\t" if "\t" in text else " ") if f]
    if fields[0] == "-DOCSTART-":
      flush()
      continue
    if tagged is None:
      tagged, tagged_line = len(fields) > 1, line
    if tagged != (len(fields) > 1):
      expected = "a token and its tag" if tagged else "a single token (no tags)"
      raise InputError(f"{path}:{line}: expected {expected} as on line {tagged_line}, got {text[:80]!r}")
    if tagged and not _is_tag(fields[-1]):
      raise InputError(f"{path}:{line}: expected a tag (O, or B-/I-/E-/S- and a type) in the last column, "
                       f"got {fields[-1]!r}")
    if not words:
      start = line
    words.append(fields[0])
    if tagged:
      tags.append(fields[-1])
  flush()
  if not examples:
    raise InputError(f"{path}:1: no sentences; expected CoNLL lines of `token ... tag`, blank lines between "
                     "sentences")
  return examples
