"""Parallel text for translation and abstractive summarization: aligned (source, target) segments.

Layouts (plain UTF-8, or gzipped when the name ends in .gz):
- two aligned files, one segment a line (Multi30k's `train.en` / `train.de`): line i of the source
  goes with line i of the target. Different line counts are an error naming both files, both
  counts and the first line the shorter one lacks: a misalignment is never silently truncated.
- one TSV, `source<TAB>target` a line, no header, no quoting (Moses / OPUS exports).
- a source file alone (`read_parallel(src)`), for generation input: targets are None.

Blank segments on either side of a pair are skipped and counted in a ReadReport (real corpora have
them; a pair with one side empty teaches nothing), as are segments longer than a limit in tokens
(`filter_lengths`), which would otherwise be cut mid-sentence. Every example carries "path:line".
"""
import dataclasses
import itertools
from typing import Callable, Sequence

from flaxbert.errors import InputError
from flaxbert.tasks.readers import ReadReport, _lines, _rows


@dataclasses.dataclass(frozen=True)
class ParallelExample:
  source: str
  target: str | None  # None when read from a source file alone
  where: str  # "path:line" (the source file's line for aligned files)


def read_parallel(source_path, target_path=None, report: ReadReport | None = None) -> list[ParallelExample]:
  """Aligned segments of `source_path` and `target_path` (or of `source_path` alone)."""
  report = report if report is not None else ReadReport(str(source_path))
  examples = []
  missing = object()
  if target_path is None:
    pairs = ((src, None) for src in _lines(source_path))
  else:
    pairs = itertools.zip_longest(_lines(source_path), _lines(target_path), fillvalue=missing)
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
  for line, cells in _rows(path, "\t", quoting=False):
    if len(cells) != 2:
      raise InputError(f"{path}:{line}: expected 2 tab-separated columns (source, target), got {len(cells)}")
    src, tgt = (c.strip() for c in cells)
    if not src or not tgt:
      report.skip("empty source" if not src else "empty target")
      continue
    examples.append(ParallelExample(src, tgt, f"{path}:{line}"))
  report.examples += len(examples)
  return examples


def filter_lengths(examples: Sequence[ParallelExample], tokenize: Callable[[str], Sequence],
                   max_source_tokens: int, max_target_tokens: int,
                   report: ReadReport) -> list[ParallelExample]:
  """The examples whose source and target fit (in `tokenize`'s tokens); the others counted as
  skipped in `report` ("source over N tokens" / "target over N tokens")."""
  if max_source_tokens < 1 or max_target_tokens < 1:
    raise InputError(f"max_source_tokens, max_target_tokens: expected >= 1, got {max_source_tokens}, "
                     f"{max_target_tokens}")
  kept = []
  for example in examples:
    if len(tokenize(example.source)) > max_source_tokens:
      report.skip(f"source over {max_source_tokens} tokens")
    elif example.target is not None and len(tokenize(example.target)) > max_target_tokens:
      report.skip(f"target over {max_target_tokens} tokens")
    else:
      kept.append(example)
  report.examples -= len(examples) - len(kept)
  return kept


def _count(path) -> int:
  return sum(1 for _ in _lines(path))
