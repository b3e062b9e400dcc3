"""Parallel text for translation and abstractive summarization: aligned (source, target) segments.

Layouts (plain UTF-8, or gzipped when the name ends in .gz):
- two aligned files, one segment a line (Multi30k's `train.en` / `train.de`): line i of the source
  goes with line i of the target. Different line counts are an error naming both files, both
  counts and the first line the shorter one lacks: a misalignment is never silently truncated.
- one TSV, `source<TAB>target` a line, no header, no quoting (Moses / OPUS exports).
- a source file alone (`read_parallel(src)`), for generation input: targets are None.
- JSONL (summarization sets: DialogSum, SciTLDR): the source and target picked by field name; a
  list value is joined (sentences of a source) or gives several references (SciTLDR's TLDRs), and
  several target fields (`summary1,summary2,summary3`) give several references; the first reference
  is the training target.
`read_spec` takes one string for all of them: `SRC|TGT` (two aligned files), `*.tsv[.gz]`,
`*.jsonl[.gz]`, or any other single file (sources only).

Blank segments on either side of a pair are skipped and counted in a ReadReport (real corpora have
them; a pair with one side empty teaches nothing), as are segments longer than a limit in tokens
(`filter_lengths`), which would otherwise be cut mid-sentence. Every example carries "path:line".
"""
import dataclasses
import itertools
from pathlib import Path
from typing import Callable, Sequence

from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.finetune.tasks.readers import ReadReport, delimited_rows, jsonl_rows, text_lines


@dataclasses.dataclass(frozen=True)
class ParallelExample:
  source: str
  target: str | None  # None when read from a source file alone
  where: str  # "path:line" (the source file's line for aligned files)
  extra_references: tuple[str, ...] = ()  # further references of a multi-reference test set

  @property
  def references(self) -> tuple[str, ...]:
    """Every reference target (empty when there is no target)."""
    return (() if self.target is None else (self.target,)) + self.extra_references


def read_parallel(source_path, target_path=None, report: ReadReport | None = None) -> list[ParallelExample]:
  """Aligned segments of `source_path` and `target_path` (or of `source_path` alone)."""
  report = report if report is not None else ReadReport(str(source_path))
  examples = []
  missing = object()
  if target_path is None:
    pairs = ((src, None) for src in text_lines(source_path))
  else:
    pairs = itertools.zip_longest(text_lines(source_path), text_lines(target_path), fillvalue=missing)
  for line, (src, tgt) in enumerate(pairs, 1):
    if src is missing or tgt is missing:
      extra = [src if tgt is missing else tgt] + [s if t is missing else t for s, t in pairs]
      if all(not x.strip() for x in extra):  # blank lines at the end of the longer file
        break
      longer, shorter = (target_path, source_path) if src is missing else (source_path, target_path)
      raise InputError(f"{source_path} and {target_path} are not aligned: {_count(source_path)} and "
                       f"{_count(target_path)} lines; {shorter} has no line {line} to pair with {longer}:{line}")
    src = src.strip()
    tgt = tgt.strip() if tgt is not None else None
    if not src or tgt == "":
      report.skip("empty source" if not src else "empty target")
      continue
    examples.append(ParallelExample(src, tgt, f"{source_path}:{line}"))
  report.examples += len(examples)
  return examples


def read_parallel_tsv(path, report: ReadReport | None = None) -> list[ParallelExample]:
  """`source<TAB>target` rows; a row with another number of columns is an error naming its line."""
  report = report if report is not None else ReadReport(str(path))
  examples = []
  for line, cells in delimited_rows(path, "\t", quoting=False):
    if len(cells) != 2:
      raise InputError(f"{path}:{line}: expected 2 tab-separated columns (source, target), got {len(cells)}")
    src, tgt = (c.strip() for c in cells)
    if not src or not tgt:
      report.skip("empty source" if not src else "empty target")
      continue
    examples.append(ParallelExample(src, tgt, f"{path}:{line}"))
  report.examples += len(examples)
  return examples


def read_parallel_jsonl(path, source_field: str, target_fields: Sequence[str],
                        report: ReadReport | None = None) -> list[ParallelExample]:
  """One example per JSON object: `source_field` (text or a list of texts, joined by spaces) and
  the references of `target_fields` (each text or a list of texts); no target fields: sources only.
  A missing or non-text field is an error naming path:line; an empty source or first reference
  is a counted skip."""
  report = report if report is not None else ReadReport(str(path))
  examples = []
  for line, record in jsonl_rows(path):
    source = " ".join(_texts(record, source_field, path, line)).strip()
    refs = [t.strip() for name in target_fields for t in _texts(record, name, path, line)]
    if not source or (target_fields and (not refs or not refs[0])):
      report.skip("empty source" if not source else "empty target")
      continue
    examples.append(ParallelExample(source, refs[0] if refs else None, f"{path}:{line}",
                                    tuple(r for r in refs[1:] if r)))
  report.examples += len(examples)
  return examples


def _texts(record: dict, field: str, path, line: int) -> list[str]:
  value = record.get(field)
  if isinstance(value, str):
    return [value]
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return value
  found = "no such field" if value is None else f"got {type(value).__name__}"
  raise InputError(f"{path}:{line}: field {field!r}: expected text or a list of texts ({found}; "
                   f"fields: {sorted(record)})")


def read_spec(spec: str, source_field: str = "source", target_fields: Sequence[str] = ("target",),
              report: ReadReport | None = None, sources_only: bool = False) -> list[ParallelExample]:
  """Examples from `SRC|TGT`, a .tsv, a .jsonl or (sources only) a plain file; see the module doc.

  sources_only: read the source side alone (generation input); a `SRC|TGT` spec then reads SRC."""
  spec = str(spec)
  name = spec.removesuffix(".gz")
  if "|" in spec:
    source, _, target = spec.partition("|")
    for path in (source, target):
      _exists(path, spec)
    return read_parallel(source, None if sources_only else target, report)
  _exists(spec, spec)
  if name.endswith(".jsonl"):
    return read_parallel_jsonl(spec, source_field, () if sources_only else tuple(target_fields), report)
  if name.endswith(".tsv"):
    examples = read_parallel_tsv(spec, report)
    return [dataclasses.replace(e, target=None) for e in examples] if sources_only else examples
  if not sources_only:
    raise InputError(f"{spec}: expected SOURCE|TARGET (two aligned files), a .tsv (source<TAB>target) "
                     "or a .jsonl file; a single plain file holds sources only")
  return read_parallel(spec, None, report)


def _exists(path: str, spec: str) -> None:
  if not storage.path(path).is_file():
    raise InputError(f"{spec}: {path}: no such file")


def filter_lengths(examples: Sequence[ParallelExample], tokenize: Callable[[str], Sequence],
                   max_source_tokens: int | None, max_target_tokens: int,
                   report: ReadReport) -> list[ParallelExample]:
  """The examples whose source and target fit (in `tokenize`'s tokens); the others counted as
  skipped in `report` ("source over N tokens" / "target over N tokens"). max_source_tokens None:
  sources are not checked (the caller cuts them, as summarization does)."""
  if (max_source_tokens is not None and max_source_tokens < 1) or max_target_tokens < 1:
    raise InputError(f"max_source_tokens, max_target_tokens: expected >= 1, got {max_source_tokens}, "
                     f"{max_target_tokens}")
  kept = []
  for example in examples:
    if max_source_tokens is not None and len(tokenize(example.source)) > max_source_tokens:
      report.skip(f"source over {max_source_tokens} tokens")
    elif example.target is not None and len(tokenize(example.target)) > max_target_tokens:
      report.skip(f"target over {max_target_tokens} tokens")
    else:
      kept.append(example)
  report.examples -= len(examples) - len(kept)
  return kept


def _count(path) -> int:
  return sum(1 for _ in text_lines(path))
