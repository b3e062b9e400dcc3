"""Readers that turn user files into plain example records; every error names the file and line.

- GLUE TSVs in the layout download_glue_data.py ships (GLUE_FORMATS, read_glue): read as the
  reference processors do (tab-separated, no quoting, since GLUE texts contain quotes); the header
  row tells a test file (no label column, label None) from a train/dev one.
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
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from flaxbert.errors import InputError

log = logging.getLogger("flaxbert")


@dataclasses.dataclass(frozen=True)
class TextExample:
  """One sentence or sentence pair; label is a class name (str), a score (float) or None (unlabelled)."""
  guid: str
  text_a: str
  text_b: str | None
  label: str | float | None
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
  """What a reader that may skip rows kept and skipped (reason → count)."""
  path: str
  examples: int = 0
  skipped: int = 0
  reasons: dict[str, int] = dataclasses.field(default_factory=dict)

  def skip(self, reason: str) -> None:
    self.skipped += 1
    self.reasons[reason] = self.reasons.get(reason, 0) + 1


# --- file access ---------------------------------------------------------------------------------


def _open_text(path):
  """A text stream of the file, gunzipped when its name ends in .gz (UTF-8, an optional BOM dropped)."""
  if str(path).endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8-sig")
  return open(path, encoding="utf-8-sig")


def _bad_byte_line(path) -> int:
  data = gzip.decompress(Path(path).read_bytes()) if str(path).endswith(".gz") else Path(path).read_bytes()
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    return data[:e.start].count(b"\n") + 1
  return 1


def _lines(path) -> Iterator[str]:
  """The file's lines (UTF-8, an optional BOM dropped, universal newlines; .gz files gunzipped)."""
  try:
    with _open_text(path) as f:
      yield from f
  except UnicodeDecodeError as e:
    raise InputError(f"{path}:{_bad_byte_line(path)}: expected UTF-8 text ({e.reason})") from None
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a truncated .gz an EOFError
    raise InputError(f"{path}: cannot read the file ({getattr(e, 'strerror', None) or e})") from None


def _rows(path, delimiter: str, quoting: bool) -> Iterator[tuple[int, list[str]]]:
  """(line, cells) of each non-blank row; a quoted (CSV) row spanning lines gets its first line."""
  if quoting:
    reader = csv.reader(_lines(path), delimiter=delimiter)
  else:
    reader = csv.reader(_lines(path), delimiter=delimiter, quotechar=None, quoting=csv.QUOTE_NONE)
  line = 1
  try:
    for row in reader:
      if row and not (len(row) == 1 and not row[0].strip()):
        yield line, row
      line = reader.line_num + 1
  except csv.Error as e:
    raise InputError(f"{path}:{line}: {e}") from None


def _column_error(path, line: int, names: Sequence[str], got: int, delimiter: str = "\t") -> InputError:
  kind = "tab-separated" if delimiter == "\t" else "comma-separated"
  return InputError(f"{path}:{line}: expected {len(names)} {kind} columns ({', '.join(names)}), got {got}")


# --- GLUE ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
  """One GLUE file layout: column names (the header row, when `header`), and which columns hold what.

  label None: a test file. guid: the id column (GLUE submissions are keyed by it), if any.
  """
  columns: tuple[str, ...]
  header: bool
  text_a: int
  text_b: int | None
  label: int | None
  guid: int | None = None


@dataclasses.dataclass(frozen=True)
class GlueFormat:
  """A GLUE task's files (train/dev layouts first, then test), label list (None: regression), metrics."""
  layouts: tuple[Layout, ...]
  labels: tuple[str, ...] | None
  metrics: tuple[str, ...]


def _with_test(columns: tuple[str, ...], text_a: int, text_b: int | None, label: int, guid: int | None,
               test_columns: tuple[str, ...], test_a: int, test_b: int | None) -> tuple[Layout, ...]:
  return (Layout(columns, True, text_a, text_b, label, guid),
          Layout(test_columns, True, test_a, test_b, None, 0))


_PAIR = ("index", "sentence1", "sentence2", "label")
_MNLI = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
         "sentence1_parse", "sentence2_parse", "sentence1", "sentence2")
_STSB = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score")
_MRPC = ("#1 ID", "#2 ID", "#1 String", "#2 String")
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

GLUE_FORMATS: dict[str, GlueFormat] = {
    # CoLA train/dev: no header; source, label, the original judgement mark ("*" or empty), sentence.
    "cola": GlueFormat((Layout(("source", "label", "original_mark", "sentence"), False, 3, None, 1),
                        Layout(("index", "sentence"), True, 1, None, None, 0)), _BINARY, ("matthews_corr",)),
    "sst2": GlueFormat(_with_test(("sentence", "label"), 0, None, 1, None, ("index", "sentence"), 1, None),
                       _BINARY, ("accuracy",)),
    "mrpc": GlueFormat(_with_test(("Quality", *_MRPC), 3, 4, 0, None, ("index", *_MRPC), 3, 4),
                       _BINARY, ("f1", "accuracy")),
    "stsb": GlueFormat(_with_test(_STSB, 7, 8, 9, 0, _STSB[:-1], 7, 8), None, ("spearman", "pearson")),
    "qqp": GlueFormat(_with_test(("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), 3, 4, 5, 0,
                                 ("id", "question1", "question2"), 1, 2), _BINARY, ("f1", "accuracy")),
    "mnli": GlueFormat((Layout((*_MNLI, "label1", "gold_label"), True, 8, 9, 11, 0),  # train
                        Layout((*_MNLI, "label1", "label2", "label3", "label4", "label5", "gold_label"),
                               True, 8, 9, 15, 0),  # dev_matched / dev_mismatched
                        Layout(_MNLI, True, 8, 9, None, 0),  # test_matched / test_mismatched
                        Layout(_PAIR[:-1], True, 1, 2, None, 0)),  # diagnostic.tsv (AX)
                       ("contradiction", "entailment", "neutral"), ("accuracy",)),
    "qnli": GlueFormat(_with_test(("index", "question", "sentence", "label"), 1, 2, 3, 0,
                                  ("index", "question", "sentence"), 1, 2), _NLI2, ("accuracy",)),
    "rte": GlueFormat(_with_test(_PAIR, 1, 2, 3, 0, _PAIR[:-1], 1, 2), _NLI2, ("accuracy",)),
    "wnli": GlueFormat(_with_test(_PAIR, 1, 2, 3, 0, _PAIR[:-1], 1, 2), _BINARY, ("accuracy",)),
}


def _glue_layout(task: str, fmt: GlueFormat, path, line: int, first: list[str]) -> tuple[Layout, bool]:
  """The layout of a GLUE file from its first row, and whether that row is a header."""
  cells = tuple(c.strip() for c in first)
  for layout in fmt.layouts:
    if layout.header and cells == layout.columns:
      return layout, True
  headerless = [layout for layout in fmt.layouts if not layout.header]
  if headerless:
    return headerless[0], False
  headers = " or ".join(repr("\t".join(layout.columns)) for layout in fmt.layouts)
  got = "\t".join(first)[:200]
  raise InputError(f"{path}:{line}: expected the header row of a GLUE {task} file, {headers}; got {got!r}")


def _glue_label(task: str, fmt: GlueFormat, path, line: int, cell: str) -> str | float:
  value = cell.strip()
  if fmt.labels is not None:
    if value not in fmt.labels:
      raise InputError(f"{path}:{line}: unknown {task} label {value!r}; expected one of {list(fmt.labels)}")
    return value
  try:
    score = float(value)
  except ValueError:
    score = math.nan
  if not 0.0 <= score <= 5.0:
    raise InputError(f"{path}:{line}: expected an STS-B similarity score, a number in [0, 5], got {value!r}")
  return score


def read_glue(task: str, path, skip_malformed: bool = False, report: ReadReport | None = None) -> list[TextExample]:
  """The examples of a GLUE TSV of `task` (a key of GLUE_FORMATS); test files give label None.

  A row with the wrong number of columns is an error, or, with skip_malformed (the reference
  processors skip QQP's few broken rows), skipped and counted in `report` and the log.
  """
  if task not in GLUE_FORMATS:
    raise InputError(f"GLUE task {task!r}: expected one of {sorted(GLUE_FORMATS)}")
  fmt = GLUE_FORMATS[task]
  report = report if report is not None else ReadReport(str(path))
  rows = _rows(path, "\t", quoting=False)
  first = next(rows, None)
  if first is None:
    raise InputError(f"{path}:1: empty file; expected a GLUE {task} TSV")
  layout, is_header = _glue_layout(task, fmt, path, *first)
  stem, examples = Path(path).stem, []
  for line, row in (rows if is_header else chain([first], rows)):
    if len(row) != len(layout.columns):
      if not skip_malformed:
        error = _column_error(path, line, layout.columns, len(row))
        raise InputError(f"{error} (--config.skip_malformed_rows=true skips such rows)")
      report.skip(f"{len(row)} columns instead of {len(layout.columns)}")
      continue
    label = None if layout.label is None else _glue_label(task, fmt, path, line, row[layout.label])
    guid = row[layout.guid] if layout.guid is not None else f"{stem}-{line}"
    text_b = row[layout.text_b] if layout.text_b is not None else None
    examples.append(TextExample(guid, row[layout.text_a], text_b, label, f"{path}:{line}"))
  report.examples = len(examples)
  if report.skipped:
    log.warning("%s: skipped %d malformed rows (%s)", path, report.skipped, report.reasons)
  if not examples:
    raise InputError(f"{path}: no examples{' after the header row' if is_header else ''}")
  return examples


# --- custom tables: .tsv / .csv / .jsonl ---------------------------------------------------------

_GUID_KEYS = ("id", "idx", "guid")


def _label_text(value) -> str:
  return value if isinstance(value, str) else json.dumps(value)


def _table_rows(path, required: Sequence[str], optional: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
  """(line, {name: cell}) of a .tsv / .csv file with a header row: the `required` columns and those
  of `optional` that the header has."""
  delimiter = "\t" if str(path).endswith(".tsv") else ","
  rows = _rows(path, delimiter, quoting=delimiter == ",")
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
      raise _column_error(path, line, header, len(row), delimiter)
    yield line, {name: row[i] for name, i in index.items()}


def _jsonl_rows(path) -> Iterator[tuple[int, dict]]:
  for line, text in enumerate(_lines(path), 1):
    if not text.strip():
      continue
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      raise InputError(f"{path}:{line}: expected one JSON object a line ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
      raise InputError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
    yield line, record


def read_table(path, text_a: str, text_b: str | None, label: str | None) -> list[TextExample]:
  """Examples from a .tsv / .csv (header row) or .jsonl file, texts and label picked by column name.

  The text columns must exist. A label column missing from the header (or a label key missing
  from the first JSON line) makes an unlabelled file (label None, for prediction); in a labelled
  file every row needs a label. Labels are kept as text (JSON numbers as written: 1 → "1").
  An "id" / "idx" / "guid" column, if present, gives the guids.
  """
  path_text = str(path)
  if not path_text.endswith((".tsv", ".csv", ".jsonl")):
    raise InputError(f"{path}: expected a .tsv, .csv or .jsonl file")
  jsonl = path_text.endswith(".jsonl")
  texts = [text_a] + ([text_b] if text_b else [])
  rows = _jsonl_rows(path) if jsonl else _table_rows(path, texts, [*([label] if label else []), *_GUID_KEYS])
  stem, examples, labelled, first_line = Path(path).stem, [], None, 0
  for line, record in rows:
    for name in texts:
      value = record.get(name)
      if value is None:
        raise InputError(f"{path}:{line}: missing the text key {name!r} (the object has {sorted(record)})")
      if not isinstance(value, str):
        raise InputError(f"{path}:{line}: expected a string for {name!r}, got {json.dumps(value)[:80]}")
    value = record.get(label) if label else None
    if labelled is None:
      labelled, first_line = value is not None, line
    if (value is not None) != labelled:
      state = "has one" if labelled else "has none"
      raise InputError(f"{path}:{line}: {'missing' if labelled else 'unexpected'} label {label!r} "
                       f"(line {first_line} {state}; a file is either all labelled or all unlabelled)")
    if value is not None:
      if isinstance(value, (dict, list)) or not _label_text(value).strip():
        raise InputError(f"{path}:{line}: expected a label in {label!r}, got {json.dumps(value)[:80]}")
      value = _label_text(value).strip()
    guid = next((_label_text(record[k]) for k in _GUID_KEYS if record.get(k) not in (None, "")), f"{stem}-{line}")
    examples.append(TextExample(guid, record[text_a], record[text_b] if text_b else None, value,
                                f"{path}:{line}"))
  if not examples:
    raise InputError(f"{path}: no examples")
  return examples


def read_pairs(path, text_a: str, text_b: str, score: str | None) -> list[TextExample]:
  """Sentence pairs with a similarity score (float; None in an unlabelled file), as read_table reads."""
  if not text_b:
    raise InputError(f"read_pairs {path}: the second text's column must be named")
  examples = []
  for e in read_table(path, text_a, text_b, score):
    if e.label is not None:
      try:
        value = float(e.label)
      except ValueError:
        value = math.nan
      if not math.isfinite(value):
        raise InputError(f"{e.source}: expected a number for the score {score!r}, got {e.label!r}")
      e = dataclasses.replace(e, label=value)
    examples.append(e)
  return examples


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

  for line, text in enumerate(_lines(path), 1):
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
