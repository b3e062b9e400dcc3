"""Evaluation scores of the fine-tuning tasks, in plain numpy with the reference libraries' semantics.

GLUE: accuracy, binary F1 (sklearn's f1_score), Matthews correlation (sklearn's matthews_corrcoef),
Pearson and Spearman correlation (scipy's pearsonr / spearmanr: Spearman is the Pearson correlation
of average ranks, ties averaged; both are NaN when an input is constant, as scipy's). `glue_scores`
gives the flat dict of a task's metrics on a 0–1 scale, as HF evaluate's "glue" metric does.

Classification on a label set of its own (`class_scores`, `multi_label_scores`, `regression_scores`):
accuracy, macro-F1 and per-class F1; micro/macro-F1 of multi-label decisions at a threshold chosen
on dev data (`best_threshold`); Pearson, Spearman and mean squared error of scores.

NER: entity-level micro precision/recall/F1 with seqeval's default (non-strict, conlleval-like)
chunking, quirks included (`entities` is seqeval's get_entities), plus per-type F1 (`f1_<TYPE>`).

Generated and selected text: corpus BLEU and chrF (sacrebleu, WMT's defaults) for translation;
ROUGE-1/2/L F1 × 100 (Google's rouge-score, stemmer on, best over several references) for summaries.
"""
import functools
from typing import Callable, Sequence

import numpy as np
from rouge_score import rouge_scorer

from flaxbert.errors import InputError


def _pair(preds, labels, what: str = "preds and labels") -> tuple[np.ndarray, np.ndarray]:
  p, y = np.asarray(preds).reshape(-1), np.asarray(labels).reshape(-1)
  if len(p) != len(y):
    raise InputError(f"{what}: expected the same number of values, got {len(p)} and {len(y)}")
  if len(p) == 0:
    raise InputError(f"{what}: no values to score")
  return p, y


def accuracy(preds, labels) -> float:
  """The fraction of predictions equal to their label."""
  p, y = _pair(preds, labels)
  return float(np.mean(p == y))


def f1_binary(preds, labels, positive=1) -> float:
  """sklearn's f1_score(labels, preds, pos_label=positive): 2·tp / (2·tp + fp + fn), 0.0 when undefined.

  As sklearn, more than two classes, or two classes of which none is `positive`, is an error.
  """
  p, y = _pair(preds, labels)
  present = np.unique(np.concatenate([y, p]))
  if len(present) > 2:
    raise InputError(f"f1_binary: expected two classes, got {len(present)}: {present.tolist()[:10]}")
  if len(present) == 2 and not np.any(present == positive):
    raise InputError(f"f1_binary: the positive class {positive!r} is not among the classes {present.tolist()}")
  tp = int(np.sum((p == positive) & (y == positive)))
  fp = int(np.sum((p == positive) & (y != positive)))
  fn = int(np.sum((p != positive) & (y == positive)))
  denominator = 2 * tp + fp + fn
  return 2.0 * tp / denominator if denominator else 0.0


def matthews_corr(preds, labels) -> float:
  """sklearn's matthews_corrcoef (the multi-class R_K formula on the confusion matrix); 0.0 when undefined."""
  p, y = _pair(preds, labels)
  _, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
  codes = codes.reshape(-1)
  y_codes, p_codes = codes[:len(y)], codes[len(y):]
  k = int(codes.max()) + 1
  confusion = np.zeros((k, k), np.float64)
  np.add.at(confusion, (y_codes, p_codes), 1.0)
  t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
  n_correct, n = np.trace(confusion), p_sum.sum()
  cov_yp = n_correct * n - np.dot(t_sum, p_sum)
  cov_pp = n * n - np.dot(p_sum, p_sum)
  cov_yy = n * n - np.dot(t_sum, t_sum)
  if cov_pp * cov_yy == 0:
    return 0.0
  return float(cov_yp / np.sqrt(cov_yy * cov_pp))


def _floats(x, y, name: str) -> tuple[np.ndarray, np.ndarray]:
  a, b = _pair(x, y, f"{name}: x and y")
  if len(a) < 2:
    raise InputError(f"{name}: expected at least 2 values, got {len(a)}")
  return a.astype(np.float64), b.astype(np.float64)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
  if np.isnan(a).any() or np.isnan(b).any() or (a == a[0]).all() or (b == b[0]).all():
    return float("nan")  # scipy: NaN inputs propagate; a constant input has no correlation
  am, bm = a - a.mean(), b - b.mean()
  am, bm = am / np.linalg.norm(am), bm / np.linalg.norm(bm)
  return float(np.clip(np.dot(am, bm), -1.0, 1.0))


def pearson(x, y) -> float:
  """scipy.stats.pearsonr(x, y).statistic (NaN if either input is constant or has a NaN)."""
  return _pearson(*_floats(x, y, "pearson"))


def average_ranks(x) -> np.ndarray:
  """scipy.stats.rankdata(x, method="average"): 1-based ranks, tied values get their mean rank."""
  a = np.asarray(x, np.float64).reshape(-1)
  order = np.argsort(a, kind="mergesort")
  inverse = np.empty(len(a), np.intp)
  inverse[order] = np.arange(len(a))
  ordered = a[order]
  new = np.r_[True, ordered[1:] != ordered[:-1]]
  dense = np.cumsum(new)[inverse]
  bounds = np.r_[np.nonzero(new)[0], len(new)]
  return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(x, y) -> float:
  """scipy.stats.spearmanr(x, y).statistic: the Pearson correlation of the average ranks."""
  a, b = _floats(x, y, "spearman")
  if np.isnan(a).any() or np.isnan(b).any():
    return float("nan")
  return _pearson(average_ranks(a), average_ranks(b))


METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "matthews_corr": matthews_corr,
    "pearson": pearson,
    "spearman": spearman,
}


def glue_scores(metric_names: Sequence[str], preds, labels) -> dict[str, float]:
  """{name: score} for each name of `metric_names` (keys of METRICS), in that order, on a 0–1 scale."""
  unknown = [m for m in metric_names if m not in METRICS]
  if unknown:
    raise InputError(f"glue_scores: unknown metric(s) {unknown}; expected some of {sorted(METRICS)}")
  return {m: float(METRICS[m](preds, labels)) for m in metric_names}


# --- classification on any label set ---------------------------------------------------------


def _f1(tp, fp, fn) -> np.ndarray:
  """2·tp / (2·tp + fp + fn) per entry, 0.0 where undefined (sklearn's zero_division=0)."""
  tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
  denominator = 2 * tp + fp + fn
  return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1e-300), 0.0)


def class_scores(preds, labels, names: Sequence[str]) -> dict[str, float]:
  """Single-label: accuracy, macro-F1 over all `names` (sklearn's f1_score(average="macro",
  labels=range(K)), a class absent from both sides counting 0) and f1_<name> per class; preds and
  labels are class ids."""
  p, y = _pair(preds, labels)
  k = np.arange(len(names))[:, None]
  tp = np.sum((p == k) & (y == k), axis=1)
  f1 = _f1(tp, np.sum((p == k) & (y != k), axis=1), np.sum((p != k) & (y == k), axis=1))
  return {"accuracy": accuracy(p, y), "macro_f1": float(f1.mean()),
          **{f"f1_{name}": float(v) for name, v in zip(names, f1)}}


def multi_label_scores(predicted, gold, names: Sequence[str]) -> dict[str, float]:
  """Multi-label, on [N, K] 0/1 matrices: micro-F1 (over all decisions), macro-F1 (mean of the
  classes' F1), exact-match (subset) accuracy and f1_<name> per class, as sklearn's f1_score."""
  p, y = np.asarray(predicted, bool), np.asarray(gold, bool)
  if p.shape != y.shape or p.ndim != 2 or len(p) == 0:
    raise InputError(f"multi_label_scores: expected two equal [N, K] matrices, got {p.shape} and {y.shape}")
  tp, fp, fn = np.sum(p & y, 0), np.sum(p & ~y, 0), np.sum(~p & y, 0)
  per_class = _f1(tp, fp, fn)
  return {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())), "macro_f1": float(per_class.mean()),
          "subset_accuracy": float(np.mean(np.all(p == y, axis=1))),
          **{f"f1_{name}": float(v) for name, v in zip(names, per_class)}}


THRESHOLDS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


def best_threshold(probabilities, gold) -> float:
  """The probability threshold of THRESHOLDS (0.05 … 0.95) with the best micro-F1 on (dev) data;
  ties go to the one closest to 0.5."""
  probabilities, y = np.asarray(probabilities), np.asarray(gold, bool)
  ranked = sorted(THRESHOLDS, key=lambda t: abs(t - 0.5))
  f1 = [float(_f1(np.sum((probabilities >= t) & y), np.sum((probabilities >= t) & ~y),
                  np.sum((probabilities < t) & y))) for t in ranked]
  return float(ranked[int(np.argmax(f1))])


def regression_scores(preds, labels) -> dict[str, float]:
  """Pearson and Spearman correlation and the mean squared error."""
  p, y = _floats(preds, labels, "regression_scores")
  return {"pearson": _pearson(p, y), "spearman": spearman(p, y), "mse": float(np.mean(np.square(p - y)))}


# --- NER: seqeval's entity-level scores ----------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
  """seqeval's (prefix, type) of a tag: 'B-PER' → ('B', 'PER'), 'O' → ('O', '_'), 'PER' → ('P', 'ER')."""
  if not isinstance(tag, str) or not tag:
    raise InputError(f"tag {tag!r}: expected a non-empty string such as 'O' or 'B-PER'")
  return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
  return (prev_tag in ("E", "S")
          or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
          or (prev_tag not in ("O", ".") and prev_type != type_))


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
  return (tag in ("B", "S")
          or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
          or (tag not in ("O", ".") and prev_type != type_))


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """seqeval's get_entities (default, prefix tags): [(type, start, end inclusive)] in order.

  B- and S- always start an entity, and so does I-/E- after O, after E-/S-, or after another type;
  E- and S- end one. Tags without a prefix are split as seqeval does ('PER' → prefix 'P', type 'ER').
  """
  prev_tag, prev_type, begin, chunks = "O", "", 0, []
  for i, chunk in enumerate([*tags, "O"]):
    tag, type_ = _split_tag(chunk)
    if _end_of_chunk(prev_tag, tag, prev_type, type_):
      chunks.append((prev_type, begin, i - 1))
    if _start_of_chunk(prev_tag, tag, prev_type, type_):
      begin = i
    prev_tag, prev_type = tag, type_
  return chunks


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
  precision = tp / n_pred if n_pred else 0.0
  recall = tp / n_true if n_true else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return precision, recall, f1


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
  """seqeval's micro-averaged entity F1, precision and recall over all sentences, then f1_<TYPE> per type.

  As seqeval, sentences are joined with an 'O' between them, so entities never span two sentences;
  an entity counts as correct when its type, start and end all match. Types are sorted.
  """
  if len(gold) != len(pred):
    raise InputError(f"entity_scores: expected as many predicted sentences as gold ones, "
                     f"got {len(pred)} and {len(gold)}")
  flat_gold, flat_pred = [], []
  for n, (g, p) in enumerate(zip(gold, pred)):
    if len(g) != len(p):
      raise InputError(f"entity_scores: sentence {n + 1}: expected {len(g)} predicted tags (one per word), "
                       f"got {len(p)}")
    flat_gold += [*g, "O"]
    flat_pred += [*p, "O"]
  true_by_type: dict[str, set] = {}
  pred_by_type: dict[str, set] = {}
  for found, by_type in ((entities(flat_gold), true_by_type), (entities(flat_pred), pred_by_type)):
    for type_, start, end in found:
      by_type.setdefault(type_, set()).add((start, end))
  counts = {}
  for type_ in sorted(set(true_by_type) | set(pred_by_type)):
    t, p = true_by_type.get(type_, set()), pred_by_type.get(type_, set())
    counts[type_] = (len(t & p), len(p), len(t))
  precision, recall, f1 = _prf(*(sum(c[i] for c in counts.values()) for i in range(3)))
  out = {"f1": f1, "precision": precision, "recall": recall}
  for type_, c in counts.items():
    out[f"f1_{type_}"] = _prf(*c)[2]
  return out


# --- translation ---------------------------------------------------------------------------------


def translation_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
  """Corpus BLEU and chrF (sacrebleu's defaults: 13a tokenization, BLEU-4 with exponential
  smoothing, chrF with character 6-grams and beta 2), plus case-insensitive BLEU (`bleu_uncased`,
  for models whose vocabulary lower-cases). references: each hypothesis' reference(s); a varying
  number is allowed."""
  import sacrebleu  # pylint: disable=import-outside-toplevel
  if len(hypotheses) != len(references):
    raise ValueError(f"translation_scores: {len(hypotheses)} hypotheses but {len(references)} references")
  if any(not refs for refs in references):
    raise ValueError("translation_scores: a hypothesis has no reference")
  streams = [[refs[i] if i < len(refs) else None for refs in references]
             for i in range(max((len(r) for r in references), default=1))]
  hypotheses = list(hypotheses)
  return {"bleu": sacrebleu.corpus_bleu(hypotheses, streams).score,
          "bleu_uncased": sacrebleu.corpus_bleu(hypotheses, streams, lowercase=True).score,
          "chrf": sacrebleu.corpus_chrf(hypotheses, streams).score}


# --- summaries: ROUGE ---------------------------------------------------------------------------

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


@functools.lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F1 × 100 (Google's rouge-score, Porter stemmer on); keys ROUGE_KEYS.

  A reference may be several texts (DialogSum's three summaries, SciTLDR's TLDRs): each prediction
  then scores its best F1 over them, per ROUGE variant (rouge-score's `score_multi`)."""
  if len(predictions) != len(references):
    raise ValueError(f"rouge_scores: {len(predictions)} predictions but {len(references)} references")
  refs = [[r] if isinstance(r, str) else list(r or ()) for r in references]
  if any(not r or any(x is None for x in r) for r in refs):
    raise ValueError("rouge_scores: a reference summary is missing (None or no text)")
  if not predictions:
    return {key: 0.0 for key in ROUGE_KEYS}
  totals = dict.fromkeys(ROUGE_KEYS, 0.0)
  for prediction, targets in zip(predictions, refs):
    scores = _scorer().score_multi(targets, prediction)  # best F1 over the targets
    for key in ROUGE_KEYS:
      totals[key] += scores[key].fmeasure
  return {key: 100.0 * total / len(predictions) for key, total in totals.items()}
