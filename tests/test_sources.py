"""Reading pretraining text: both layouts and every kind of bad input (splitting: test_sentences.py)."""
import pytest

from data_prep.sources import MAX_SENTENCE_CHARS, SourceStats, list_files, read_file
from flaxbert.errors import InputError


def read_all(paths, fmt):
  stats = SourceStats()
  docs = [d for f in list_files(paths) for d in read_file(f, fmt, stats)]
  return docs, stats


def test_sentence_per_line_with_blank_lines_between_documents(tmp_path):
  (tmp_path / "a.txt").write_text("First one.\nSecond one.\n\n\nOther doc.\n")
  (tmp_path / "b.txt").write_text("Single sentence doc.")
  docs, stats = read_all([tmp_path], "sentence_per_line")
  assert docs == [["First one.", "Second one."], ["Other doc."], ["Single sentence doc."]]
  assert (stats.files, stats.documents, stats.sentences) == (2, 3, 4)


def test_document_per_file_splits_sentences(tmp_path):
  (tmp_path / "book.txt").write_text("Mr. Smith went to Washington. He arrived at 5 p.m. on Monday!\n\n"
                                     "\"Is it late?\" she asked. J. R. Tolkien wrote it.\n")
  docs, _ = read_all([tmp_path / "book.txt"], "document_per_file")
  assert docs == [["Mr. Smith went to Washington.", "He arrived at 5 p.m. on Monday!",
                   "\"Is it late?\" she asked.", "J. R. Tolkien wrote it."]]


def test_bad_files_are_skipped_and_counted(tmp_path):
  (tmp_path / "empty.txt").write_text("")
  (tmp_path / "blank.txt").write_text("\n\n  \n")
  (tmp_path / "binary.bin").write_bytes(b"\x89PNG\x00\x00\x01\x02" * 100)
  (tmp_path / "latin1.txt").write_bytes("caf\xe9 ok.\nfine line.\n".encode("latin-1"))
  (tmp_path / "huge.txt").write_text(("word " * 2_000_000).strip())  # a 10 MB line, no newline
  docs, stats = read_all([tmp_path], "sentence_per_line")
  assert sorted(map(lambda p: p.split("/")[-1], stats.empty_files)) == ["blank.txt", "empty.txt"]
  assert [p.split("/")[-1] for p in stats.binary_files] == ["binary.bin"]
  assert [p.split("/")[-1] for p in stats.files_with_bad_utf8] == ["latin1.txt"] and stats.bad_utf8_lines == 1
  huge = [d for d in docs if d[0].startswith("word")][0]
  assert all(len(s) <= MAX_SENTENCE_CHARS for s in huge) and sum(len(s) + 1 for s in huge) == 10_000_000
  assert stats.cut_sentences == 1
  assert ["caf\ufffd ok.", "fine line."] in docs
  assert "2 empty and 1 binary files" in stats.summary()


def test_missing_path_and_empty_corpus(tmp_path):
  with pytest.raises(InputError, match="nope.txt: no such file or directory"):
    list_files([tmp_path / "nope.txt"])
  (tmp_path / "d").mkdir()
  with pytest.raises(InputError, match="no input files found"):
    list_files([tmp_path / "d"])


def test_unknown_format(tmp_path):
  (tmp_path / "a.txt").write_text("x\n")
  with pytest.raises(InputError, match="input_format must be one of"):
    list(read_file(tmp_path / "a.txt", "xml", SourceStats()))
