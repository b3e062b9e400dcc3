"""Parallel-text readers: alignment, TSV, JSONL, gzip, counted skips of blank and over-long segments."""
import gzip
import json

import pytest

from flaxbert.errors import InputError
from flaxbert.finetune.tasks.parallel import filter_lengths, read_parallel, read_parallel_tsv, read_spec
from flaxbert.finetune.tasks.readers import ReadReport


def write(path, lines, gz=False):
  data = "".join(line + "\n" for line in lines).encode("utf-8")
  path.write_bytes(gzip.compress(data) if gz else data)
  return path


def test_aligned_files_pair_line_by_line_and_skip_blank_segments(tmp_path):
  src = write(tmp_path / "train.en", ["A man rides.", "", "Two dogs.", "A cat sleeps.", "Rain."])
  tgt = write(tmp_path / "train.de", ["Ein Mann reitet.", "Leer.", "Zwei Hunde.", "   ", "Regen."])
  report = ReadReport(str(src))
  examples = read_parallel(src, tgt, report)
  assert [(e.source, e.target) for e in examples] == [
      ("A man rides.", "Ein Mann reitet."), ("Two dogs.", "Zwei Hunde."), ("Rain.", "Regen.")]
  assert [e.where for e in examples] == [f"{src}:1", f"{src}:3", f"{src}:5"]
  assert report.examples == 3 and report.skipped == 2
  assert report.reasons == {"empty source": 1, "empty target": 1}


def test_gzipped_files_and_trailing_blank_lines(tmp_path):
  src = write(tmp_path / "val.en.gz", ["Hello.", "World."], gz=True)
  tgt = write(tmp_path / "val.de.gz", ["Hallo.", "Welt.", "", ""], gz=True)
  assert [e.target for e in read_parallel(src, tgt)] == ["Hallo.", "Welt."]
  assert [e.target for e in read_parallel(src)] == [None, None]


@pytest.mark.parametrize("longer", ["source", "target"])
def test_misaligned_files_name_both_counts_and_the_line(tmp_path, longer):
  three, two = ["a", "b", "c"], ["x", "y"]
  src = write(tmp_path / "s.txt", three if longer == "source" else two)
  tgt = write(tmp_path / "t.txt", two if longer == "source" else three)
  with pytest.raises(InputError, match=r"not aligned: (3 and 2|2 and 3) lines; .* has no line 3") as e:
    read_parallel(src, tgt)
  assert str(src) in str(e.value) and str(tgt) in str(e.value)


def test_tsv_rows_and_bad_rows(tmp_path):
  good = tmp_path / "pairs.tsv"
  good.write_text('He said "hi".\tEr sagte "hallo".\n\t\tnothing\nOnly\tNur\n', encoding="utf-8")
  with pytest.raises(InputError, match=r"pairs.tsv:2: expected 2 tab-separated columns"):
    read_parallel_tsv(good)
  good.write_text('He said "hi".\tEr sagte "hallo".\n \tleer\nOnly\tNur\n', encoding="utf-8")
  report = ReadReport(str(good))
  examples = read_parallel_tsv(good, report)
  assert [(e.source, e.target) for e in examples] == [('He said "hi".', 'Er sagte "hallo".'), ("Only", "Nur")]
  assert report.reasons == {"empty source": 1} and examples[1].where == f"{good}:3"


def test_bad_bytes_name_the_line(tmp_path):
  path = tmp_path / "bad.en"
  path.write_bytes(b"fine\n\xff broken\n")
  with pytest.raises(InputError, match=r"bad.en:2: expected UTF-8"):
    read_parallel(path)


def test_filter_lengths_counts_what_it_drops(tmp_path):
  src = write(tmp_path / "s", ["one two", "one two three four", "one"])
  tgt = write(tmp_path / "t", ["eins zwei", "eins", "eins zwei drei vier"])
  report = ReadReport(str(src))
  examples = read_parallel(src, tgt, report)
  kept = filter_lengths(examples, str.split, max_source_tokens=3, max_target_tokens=3, report=report)
  assert [e.source for e in kept] == ["one two"]
  assert report.examples == 1 and report.reasons == {"source over 3 tokens": 1, "target over 3 tokens": 1}
  with pytest.raises(InputError, match="max_source_tokens"):
    filter_lengths(examples, str.split, 0, 3, report)
  # None: sources are the caller's to cut (summarization); only the long target still goes
  report = ReadReport(str(src))
  kept = filter_lengths(read_parallel(src, tgt, report), str.split, None, 3, report)
  assert [e.source for e in kept] == ["one two", "one two three four"]
  assert report.reasons == {"target over 3 tokens": 1}


def test_read_spec_jsonl_with_lists_and_several_references(tmp_path):
  path = tmp_path / "test.jsonl"
  rows = [{"dialogue": ["Hi.", "Bye."], "s1": "A greeting.", "s2": ["Hello.", ""]},
          {"dialogue": "  ", "s1": "x", "s2": "y"}, {"dialogue": "Rain.", "s1": "", "s2": "Weather."}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  report = ReadReport(str(path))
  examples = read_spec(str(path), "dialogue", ["s1", "s2"], report)
  assert [(e.source, e.references) for e in examples] == [("Hi. Bye.", ("A greeting.", "Hello."))]
  assert examples[0].where == f"{path}:1" and report.reasons == {"empty source": 1, "empty target": 1}
  assert [e.target for e in read_spec(str(path), "dialogue", ["s1"], sources_only=True)] == [None, None]
  with pytest.raises(InputError, match=r"test.jsonl:1: field 'summary': expected text .*no such field"):
    read_spec(str(path), "dialogue", ["summary"])
  src, tgt = write(tmp_path / "a.en", ["one", "two"]), write(tmp_path / "a.de", ["eins", "zwei"])
  assert [e.target for e in read_spec(f"{src}|{tgt}")] == ["eins", "zwei"]
  assert [e.target for e in read_spec(f"{src}|{tgt}", sources_only=True)] == [None, None]
  with pytest.raises(InputError, match=r"a\.fr: no such file"):
    read_spec(f"{src}|{tmp_path / 'a.fr'}")
  with pytest.raises(InputError, match="a single plain file holds sources only"):
    read_spec(str(src))
  tsv = tmp_path / "p.tsv"
  tsv.write_text("one\teins\n")
  assert [(e.source, e.target) for e in read_spec(str(tsv))] == [("one", "eins")]
