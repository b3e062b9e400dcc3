"""flaxbert.finetune.tasks.scores: hand-computed GLUE and seqeval values, and the reference libraries when installed."""
import math
import random
import warnings

import numpy as np
import pytest

from flaxbert.errors import InputError
from flaxbert.finetune.tasks import scores

# --- GLUE metrics, by hand -----------------------------------------------------------------------


def test_accuracy():
  assert scores.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
  assert scores.accuracy(np.array(["a", "b"]), ["a", "b"]) == 1.0
  with pytest.raises(InputError, match="same number"):
    scores.accuracy([1, 0], [1])
  with pytest.raises(InputError, match="no values"):
    scores.accuracy([], [])


def test_f1_binary():
  # tp 2, fp 1, fn 1 → 2·2 / (2·2 + 1 + 1)
  assert scores.f1_binary([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == pytest.approx(4 / 6)
  assert scores.f1_binary([0, 0], [0, 0]) == 0.0  # no predicted or true positives
  assert scores.f1_binary([1, 1], [0, 0]) == 0.0
  assert scores.f1_binary(["b", "a"], ["b", "b"], positive="b") == pytest.approx(2 / 3)
  with pytest.raises(InputError, match="two classes"):
    scores.f1_binary([0, 1, 2], [0, 1, 1])
  with pytest.raises(InputError, match="positive class"):
    scores.f1_binary([0, 2], [2, 0])


def test_matthews_corr():
  # tp 2, tn 1, fp 1, fn 1: (2·1 − 1·1) / √(3·3·2·2)
  assert scores.matthews_corr([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == pytest.approx(1 / 6)
  assert scores.matthews_corr([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
  assert scores.matthews_corr([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
  assert scores.matthews_corr([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0  # constant predictions: undefined → 0
  # three classes: trace 4 of 6, all marginals 2 → (4·6 − 12) / √(24·24)
  assert scores.matthews_corr([0, 2, 1, 0, 1, 2], [0, 1, 2, 0, 1, 2]) == pytest.approx(0.5)


def test_pearson_spearman_by_hand():
  assert scores.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
  assert scores.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  assert scores.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 − 6·Σd² / (n(n²−1))
  assert scores.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
  # ties get their average rank: ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4]
  assert scores.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
  np.testing.assert_allclose(scores.average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
  assert math.isnan(scores.pearson([1, 1, 1], [1, 2, 3]))  # scipy: a constant input gives NaN
  assert math.isnan(scores.spearman([1, 2, 3], [2, 2, 2]))
  with pytest.raises(InputError, match="at least 2"):
    scores.pearson([1], [1])


def test_glue_scores():
  out = scores.glue_scores(("f1", "accuracy"), np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1]))
  assert list(out) == ["f1", "accuracy"]
  assert out == pytest.approx({"f1": 4 / 6, "accuracy": 0.6})
  assert all(type(v) is float for v in out.values())
  out = scores.glue_scores(("spearman", "pearson"), np.array([0.1, 0.2, 0.4], np.float32), [1, 2, 3])
  assert out["spearman"] == pytest.approx(1.0) and 0.9 < out["pearson"] < 1.0
  with pytest.raises(InputError, match="unknown metric"):
    scores.glue_scores(("bleu",), [1], [1])


def test_glue_metrics_match_sklearn_and_scipy():
  metrics = pytest.importorskip("sklearn.metrics")
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.RandomState(0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # sklearn and scipy warn on one-class / constant inputs
    for trial in range(200):
      n, k = rng.randint(2, 25), rng.randint(2, 5)
      y, p = rng.randint(0, k, n), rng.randint(0, k, n)
      assert scores.matthews_corr(p, y) == pytest.approx(metrics.matthews_corrcoef(y, p))
      assert scores.accuracy(p, y) == pytest.approx(metrics.accuracy_score(y, p))
      assert scores.f1_binary(p % 2, y % 2) == pytest.approx(metrics.f1_score(y % 2, p % 2, zero_division=0))
      x, z = rng.randint(0, 4, n).astype(float), (rng.randn(n) if trial % 2 else rng.randint(0, 3, n))
      for ours, theirs in ((scores.pearson, stats.pearsonr), (scores.spearman, stats.spearmanr)):
        got, expected = ours(x, z), float(theirs(x, z)[0])
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected), (x, z)
      np.testing.assert_allclose(scores.average_ranks(x), stats.rankdata(x))


# --- NER: seqeval semantics ----------------------------------------------------------------------

# (tags, seqeval's get_entities(tags)); the values were produced by seqeval 1.2.2
ENTITY_CASES = [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["O", "I-PER", "I-PER"], [("PER", 1, 2)]),  # I- after O starts an entity
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # I- of another type starts one
    (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),  # B- always starts
    (["B-PER", "O", "I-PER"], [("PER", 0, 0), ("PER", 2, 2)]),
    (["S-PER", "B-LOC", "E-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2), ("LOC", 3, 3)]),  # IOBES
    (["E-PER", "E-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
    (["I-PER", "E-PER", "S-PER"], [("PER", 0, 1), ("PER", 2, 2)]),
    (["PER", "PER", "O"], [("ER", 0, 1)]),  # no prefix: seqeval takes 'P' as the prefix
    (["B", "I", "O"], [("_", 0, 1)]),  # no type
    (["B-A-B", "I-A-B"], [("A-B", 0, 1)]),
    (["O", "O"], []),
    ([], []),
]


@pytest.mark.parametrize("tags,expected", ENTITY_CASES)
def test_entities(tags, expected):
  assert scores.entities(tags) == expected


def test_entity_scores_seqeval_readme():
  gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
  pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
  out = scores.entity_scores(gold, pred)
  assert list(out)[:3] == ["f1", "precision", "recall"]
  assert out == pytest.approx({"f1": 0.5, "precision": 0.5, "recall": 0.5, "f1_MISC": 0.0, "f1_PER": 1.0})


def test_entity_scores_sentences_do_not_merge():
  # each sentence's I-PER starts its own entity: 2 gold PER; the prediction finds 1 PER and a wrong LOC
  gold = [["B-PER", "I-PER"], ["I-PER", "O"]]
  pred = [["B-PER", "I-PER"], ["B-LOC", "O"]]
  out = scores.entity_scores(gold, pred)
  assert out == pytest.approx({"f1": 0.5, "precision": 0.5, "recall": 0.5, "f1_LOC": 0.0, "f1_PER": 2 / 3})
  assert scores.entity_scores([["I-PER"], ["I-PER"]], [["I-PER"], ["I-PER"]])["f1"] == 1.0
  none = scores.entity_scores([["O"]], [["O"]])
  assert none == {"f1": 0.0, "precision": 0.0, "recall": 0.0}


def test_entity_scores_mismatch():
  with pytest.raises(InputError, match="sentence 2: expected 2 predicted tags"):
    scores.entity_scores([["O"], ["O", "O"]], [["O"], ["O"]])
  with pytest.raises(InputError, match="as many predicted sentences"):
    scores.entity_scores([["O"]], [])


def test_entity_scores_match_seqeval():
  sequence_labeling = pytest.importorskip("seqeval.metrics.sequence_labeling")
  seqeval_metrics = pytest.importorskip("seqeval.metrics")
  pool = ["O", "O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "I-MISC"]
  rnd = random.Random(0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # seqeval warns on tags without a B-/I-/E-/S- prefix
    for tags, expected in ENTITY_CASES:
      assert sequence_labeling.get_entities(list(tags)) == expected
    for _ in range(300):
      gold = [[rnd.choice(pool) for _ in range(rnd.randint(0, 8))] for _ in range(rnd.randint(1, 4))]
      pred = [[rnd.choice(pool) for _ in sentence] for sentence in gold]
      out = scores.entity_scores(gold, pred)
      assert out["f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred))
      assert out["precision"] == pytest.approx(seqeval_metrics.precision_score(gold, pred))
      assert out["recall"] == pytest.approx(seqeval_metrics.recall_score(gold, pred))
      report = seqeval_metrics.classification_report(gold, pred, output_dict=True)
      per_type = {f"f1_{k}": v["f1-score"] for k, v in report.items() if "avg" not in k}
      assert {k: v for k, v in out.items() if k.startswith("f1_")} == pytest.approx(per_type)


def test_translation_scores_are_sacrebleus_with_several_references():
  sacrebleu = pytest.importorskip("sacrebleu")
  hyps = ["Ein Mann läuft schnell.", "Zwei Hunde spielen im Park."]
  refs = [["Ein Mann rennt schnell."], ["Zwei Hunde spielen im Park.", "zwei hunde spielen"]]
  got = scores.translation_scores(hyps, refs)
  streams = [["Ein Mann rennt schnell.", "Zwei Hunde spielen im Park."], [None, "zwei hunde spielen"]]
  assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
  assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score)
  assert scores.translation_scores(["a b c d e"], [["a b c d e"]])["bleu"] == pytest.approx(100.0)
  upper = scores.translation_scores(["EIN MANN LÄUFT SCHNELL."], [["Ein Mann läuft schnell."]])
  assert upper["bleu"] < 20 and upper["bleu_uncased"] == pytest.approx(100.0)
  with pytest.raises(ValueError, match="no reference"):
    scores.translation_scores(["x"], [[]])
