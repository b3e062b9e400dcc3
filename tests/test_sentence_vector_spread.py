"""bench/sentence_vector_spread.py: the collapse figures on vectors whose answer is known."""
import numpy as np
import pytest

from bench.sentence_vector_spread import read_sentences, spread_of


def test_identical_vectors_are_fully_collapsed():
  r = spread_of(np.tile([[3.0, 4.0, 0.0]], (5, 1)))
  assert r["mean_pairwise_cosine"] == pytest.approx(1.0)
  assert r["spread"] == pytest.approx(0.0, abs=1e-12)
  assert r["top_direction_share"] is None  # no variance: no direction holds a share of it


def test_orthonormal_vectors_spread_over_every_direction():
  r = spread_of(np.eye(6) * 2.0)  # lengths do not matter: rows are normalized first
  assert r["mean_pairwise_cosine"] == pytest.approx(0.0, abs=1e-12)
  assert r["top_direction_share"] == pytest.approx(1 / 5)  # centred, 6 points span 5 equal directions


def test_vectors_along_one_line_have_one_direction():
  rng = np.random.default_rng(0)
  base, along = np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 0, 0])
  r = spread_of(base + 0.1 * rng.normal(size=(20, 1)) * along)
  assert r["top_direction_share"] > 0.99
  assert 0.9 < r["mean_pairwise_cosine"] < 1.0


def test_sentences_from_a_tsv_skip_its_header(tmp_path):
  tsv = tmp_path / "dev.tsv"
  tsv.write_text("sentence\tlabel\na fine film .\t1\n\ndull .\t0\nthird\t1\n")
  assert read_sentences(tsv, 2) == ["a fine film .", "dull ."]
  (tmp_path / "one.txt").write_text("only one\n")
  with pytest.raises(SystemExit, match="one.txt: 1 sentences; expected at least 2"):
    read_sentences(tmp_path / "one.txt", 10)
