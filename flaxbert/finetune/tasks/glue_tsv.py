"""GLUE TSVs in the layout download_glue_data.py ships (GLUE_FORMATS, read_glue).

Read as the reference processors do: tab-separated, no quoting (GLUE texts contain quotes). The
header row tells a test file (no label column, label None) from a train/dev one.
"""
import dataclasses
import logging
import math
from itertools import chain
from pathlib import Path

from flaxbert.errors import InputError
from flaxbert.finetune.tasks.readers import ReadReport, TextExample, column_error, delimited_rows

log = logging.getLogger("flaxbert")


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


# (text_a, text_b) columns of the GLUE tasks' CSV/JSONL exports (HF datasets, TFDS) where they are not
# sentence1 / sentence2; "" for a single-sentence task.
EXPORT_COLUMNS = {"cola": ("sentence", ""), "sst2": ("sentence", ""), "qqp": ("question1", "question2"),
                  "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence")}


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
  rows = delimited_rows(path, "\t", quoting=False)
  first = next(rows, None)
  if first is None:
    raise InputError(f"{path}:1: empty file; expected a GLUE {task} TSV")
  layout, is_header = _glue_layout(task, fmt, path, *first)
  stem, examples = Path(path).stem, []
  for line, row in (rows if is_header else chain([first], rows)):
    if len(row) != len(layout.columns):
      if not skip_malformed:
        raise InputError(f"{column_error(path, line, layout.columns, len(row))} "
                         "(--config.skip_malformed_rows=true skips such rows)")
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
