"""bench/word_embedding_drift.py: the drift figures on tables whose answer is known, and the grafts."""
import types

import jax
import numpy as np
import pytest

from bench.word_embedding_drift import bucket_stats, grafts, main, token_counts, word_table
from conftest import random_params
from flaxbert.text.tokenization import WordPieceTokenizer


def test_rows_that_kept_their_init_have_no_shared_part():
  rng = np.random.default_rng(0)
  init = rng.normal(size=(400, 64))
  r = bucket_stats(init, init, np.arange(400))
  assert r["init_cosine"] == pytest.approx(1.0, abs=0.01)  # less the (tiny) mean, each row is its init
  assert r["shared_share"] < 0.01  # independent rows: about 1/400 of the squared length is common


def test_a_common_drift_shows_as_shared_share_and_leaves_the_own_part():
  rng = np.random.default_rng(1)
  init = rng.normal(size=(300, 32))
  drift = 3.0 * rng.normal(size=32)
  r = bucket_stats(init + drift, init, np.arange(300))
  expected = drift @ drift / (drift @ drift + 32)  # |drift|^2 against |drift|^2 + E|row|^2
  assert r["shared_share"] == pytest.approx(expected, abs=0.03)
  assert r["init_cosine"] == pytest.approx(1.0, abs=0.01)  # removing the common vector recovers the rows
  scrambled = bucket_stats(rng.normal(size=(300, 32)) + drift, init, np.arange(300))
  assert abs(scrambled["init_cosine"]) < 0.05  # rows unrelated to their init


def test_token_counts_count_every_wordpiece():
  tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "##s", "dull"])
  counts = token_counts(tok, ["the films", "the dull film", "zzz"], 9, chunk=2)
  assert counts.tolist() == [0, 1, 0, 0, 0, 2, 2, 1, 1]  # zzz → [UNK]; films → film ##s; no specials added


def test_grafts_move_exactly_the_rows_and_layers_they_name(tiny_model):
  init_params, pre_params = random_params(tiny_model, seed=0), random_params(tiny_model, seed=1)
  init, pre = types.SimpleNamespace(params=init_params), types.SimpleNamespace(params=pre_params)
  start, table = word_table(init_params), word_table(pre_params)
  rare = np.zeros(len(table), bool)
  rare[[3, 7, 20]] = True
  g = grafts(pre, init, rare)
  assert set(g) == {"as_is", "rare_reset", "rare_centered", "init_words", "words_only"}
  reset = word_table(g["rare_reset"])
  np.testing.assert_array_equal(reset[rare], start[rare])
  np.testing.assert_array_equal(reset[~rare], table[~rare])
  centered = word_table(g["rare_centered"])
  np.testing.assert_allclose(centered[rare], table[rare] - table[rare].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(centered[~rare], table[~rare])
  np.testing.assert_array_equal(word_table(g["init_words"]), start)
  np.testing.assert_array_equal(word_table(g["words_only"]), table)
  layers = lambda p: jax.tree_util.tree_leaves(p["bert"]["encoder"])  # noqa: E731
  for a, b in zip(layers(g["init_words"]), layers(pre_params)):
    np.testing.assert_array_equal(a, b)  # the pretrained layers, the init's words
  for a, b in zip(layers(g["words_only"]), layers(init_params)):
    np.testing.assert_array_equal(a, b)  # the init's layers, the pretrained words
  np.testing.assert_array_equal(word_table(pre_params), table)  # the source params are not modified


@pytest.mark.parametrize("extra, message", [
    (["--corpus", "nowhere.txt"], r"--corpus: \['nowhere.txt'\]: expected existing text files"),
    (["--buckets", "0,10,5"], "--buckets '0,10,5': expected increasing counts"),
    (["--models", "init=x"], "the name 'init' is --init's"),
    (["--graft", "other"], r"--graft 'other': not one of --models \['a'\]"),
])
def test_bad_arguments_are_named_before_anything_is_loaded(extra, message, tmp_path, monkeypatch):
  text = tmp_path / "corpus.txt"
  text.write_text("some text\n")
  argv = {"--init": str(tmp_path / "absent"), "--models": "a=b", "--corpus": str(text),
          "--task": str(tmp_path / "t.tsv")}
  argv.update(zip(extra[::2], extra[1::2]))
  monkeypatch.setattr("sys.argv", ["word_embedding_drift.py", *[x for kv in argv.items() for x in kv]])
  with pytest.raises(SystemExit, match=message):
    main()


def test_models_that_are_not_name_path_are_named(tmp_path, monkeypatch):
  monkeypatch.setattr("sys.argv", ["word_embedding_drift.py", "--init", "x", "--models", "a=b,nopath",
                                   "--corpus", "c", "--task", "t"])
  with pytest.raises(SystemExit, match=r"--models: \['nopath'\]: expected name=path"):
    main()
