"""bench/sentence_vector_spread.py: the collapse figures on vectors whose answer is known."""
import numpy as np
import pytest

from bench.sentence_vector_spread import (L2_GRID, fit_logistic, probabilities, probe_accuracy, read_sentences,
                                          spread_of, with_bias)


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


def test_probe_finds_a_linear_label_and_not_a_random_one():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 5))
  y = (x[:, 2] - 0.5 * x[:, 0] > 0).astype(int)  # linear in the vectors
  r = probe_accuracy(x[:300], y[:300], x[300:], y[300:], select=100)
  assert r["probe_accuracy"] > 0.9 and r["probe_l2"] in L2_GRID
  noise = rng.integers(0, 2, 400)  # unrelated to the vectors: chance
  assert abs(probe_accuracy(x[:300], noise[:300], x[300:], noise[300:], select=100)["probe_accuracy"] - 0.5) < 0.15


def test_logistic_fit_matches_the_closed_form_optimum():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(200, 3)), rng.integers(0, 3, 200)  # three classes
  w = fit_logistic(x, y, l2=0.1)
  xb = with_bias(x)
  p = probabilities(xb, w)[:, :-1]
  grad = xb.T @ (p - np.eye(3)[y][:, :-1]) / 200 + 0.1 * np.vstack([w[:-1], np.zeros((1, 2))])
  assert np.abs(grad).max() < 1e-8  # the penalized mean cross-entropy is at its minimum


def test_binary_fit_equals_sklearns_logistic_regression():
  linear_model = pytest.importorskip("sklearn.linear_model")
  rng = np.random.default_rng(2)
  x = rng.normal(size=(150, 4))
  y = (x @ [1.0, -2.0, 0.5, 0.0] + rng.normal(size=150) > 0).astype(int)
  w = fit_logistic(x, y, l2=0.05)  # class 0's logit against the reference class 1
  ref = linear_model.LogisticRegression(C=1 / (0.05 * 150), tol=1e-12, max_iter=10_000).fit(x, y)
  np.testing.assert_allclose(-w[:-1, 0], ref.coef_[0], atol=1e-6)
  np.testing.assert_allclose(-w[-1, 0], ref.intercept_[0], atol=1e-6)
