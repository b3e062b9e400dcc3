"""Extractive QA (SQuAD v1.1 / v2.0) output side: span logits → answer texts, and the official scores.

`predict_answers` is google-research/bert run_squad.py's write_predictions (n-best start/end
indexes per window, the same validity rules, `get_final_text` to map wordpieces back onto the
original context's characters, softmax over the n-best, v2's null score against
null_score_diff_threshold). `squad_scores` is the official evaluate-v1.1.py, or evaluate-v2.0.py
(HasAns/NoAns splits, na_prob_thresh, find_best_thresh). `write_predictions_json` writes the
official {qid: text} file atomically.
"""
import collections
import json
import logging
import math
import os
import re
import string
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from flaxbert import atomic
from flaxbert.errors import InputError
from flaxbert.finetune.tasks.squad import QAExample, QAFeatures, squad_version, word_starts
from flaxbert.text.wordpiece_rules import basic_tokenize

log = logging.getLogger("flaxbert")

Prelim = collections.namedtuple("Prelim", ["feature", "start", "end", "start_logit", "end_logit"])
# span: the answer's [start, end) characters in the example's context (None for "" and "empty")
Nbest = collections.namedtuple("Nbest", ["text", "start_logit", "end_logit", "span"], defaults=[None])
_PUNCTUATION = frozenset(string.punctuation)


def get_final_text(pred_text: str, orig_text: str, lower_case: bool) -> str:
  """Projects the detokenized prediction back onto the original words' characters.

  pred_text is normalized ("steve smith" from wordpieces); orig_text the doc words it came from
  ("Steve Smith's"). The original's heuristic: BasicTokenize orig_text, find pred_text in it, and
  map character positions through the space-free forms when they have equal lengths; on any
  failure the whole orig_text is returned.
  """
  start, end = final_span(pred_text, orig_text, lower_case)
  return orig_text[start:end]


def final_span(pred_text: str, orig_text: str, lower_case: bool) -> tuple[int, int]:
  """get_final_text's answer as [start, end) characters of orig_text (all of it on any failure)."""
  def strip_spaces(text: str) -> tuple[str, dict[int, int]]:
    ns_chars, ns_to_s = [], {}
    for i, c in enumerate(text):
      if c == " ":
        continue
      ns_to_s[len(ns_chars)] = i
      ns_chars.append(c)
    return "".join(ns_chars), ns_to_s

  tok_text = " ".join(basic_tokenize(orig_text, lower_case))
  start_position = tok_text.find(pred_text)
  if start_position == -1:
    log.debug("get_final_text: unable to find %r in %r", pred_text, orig_text)
    return 0, len(orig_text)
  end_position = start_position + len(pred_text) - 1
  orig_ns_text, orig_ns_to_s = strip_spaces(orig_text)
  tok_ns_text, tok_ns_to_s = strip_spaces(tok_text)
  if len(orig_ns_text) != len(tok_ns_text):
    log.debug("get_final_text: length mismatch %r vs %r", orig_ns_text, tok_ns_text)
    return 0, len(orig_text)
  tok_s_to_ns = {s: ns for ns, s in tok_ns_to_s.items()}
  orig_start = orig_ns_to_s.get(tok_s_to_ns.get(start_position, -1))
  orig_end = orig_ns_to_s.get(tok_s_to_ns.get(end_position, -1))
  if orig_start is None or orig_end is None:
    return 0, len(orig_text)
  return orig_start, orig_end + 1


def _softmax(scores: Sequence[float]) -> list[float]:
  if not scores:
    return []
  top = max(scores)
  exps = [math.exp(s - top) for s in scores]
  total = sum(exps)
  return [e / total for e in exps]


def predict_answers(examples: Sequence[QAExample], features: QAFeatures, start_logits: Any,
                    end_logits: Any, n_best_size: int = 20, max_answer_length: int = 30,
                    version: str = "v1", null_score_diff_threshold: float = 0.0,
                    lower_case: bool = True
                    ) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
  """(predictions qid → text, nbest qid → [{text, probability, start_logit, end_logit}],
  null_odds qid → score_null - best non-null score; empty for v1).

  start_logits/end_logits: [len(features), max_seq_length]. A question with no valid span gets
  the original's nonce answer "empty" (v1); in v2 an empty n-best always holds "" instead, and a
  question without a non-null candidate is scored against a 0.0 "empty" entry.
  """
  v2 = squad_version(version) == "v2"
  start_logits = np.asarray(start_logits, np.float32)
  end_logits = np.asarray(end_logits, np.float32)
  expected = (len(features), features.input_ids.shape[1])
  for name, logits in (("start_logits", start_logits), ("end_logits", end_logits)):
    if logits.shape != expected:
      raise InputError(f"predict_answers: {name} has shape {logits.shape}; expected {expected} "
                       "(features, max_seq_length)")
  if n_best_size < 1 or max_answer_length < 1:
    raise InputError(f"predict_answers: n_best_size {n_best_size} and max_answer_length "
                     f"{max_answer_length}; expected both >= 1")
  # Python's sorted(..., reverse=True) keeps ties in index order; a stable argsort of -x does too.
  best_starts = np.argsort(-start_logits, axis=1, kind="stable")[:, :n_best_size].tolist()
  best_ends = np.argsort(-end_logits, axis=1, kind="stable")[:, :n_best_size].tolist()
  by_example: dict[int, list[int]] = collections.defaultdict(list)
  for f, e in enumerate(features.example_index.tolist()):
    by_example[e].append(f)

  predictions: dict[str, str] = {}
  nbest_out: dict[str, list[dict]] = {}
  null_odds: dict[str, float] = {}
  for example_index, ex in enumerate(examples):
    prelim: list[Prelim] = []
    score_null, null_feature, null_start, null_end = 1000000.0, 0, 0.0, 0.0
    for f in by_example.get(example_index, []):
      tokens = features.tokens[f]
      orig_map, max_context = features.token_to_orig_map[f], features.token_is_max_context[f]
      starts, ends = start_logits[f].tolist(), end_logits[f].tolist()
      if v2 and starts[0] + ends[0] < score_null:
        score_null, null_feature, null_start, null_end = starts[0] + ends[0], f, starts[0], ends[0]
      for s in best_starts[f]:
        if s >= len(tokens) or s not in orig_map or not max_context.get(s, False):
          continue
        for e in best_ends[f]:
          if e >= len(tokens) or e not in orig_map or e < s or e - s + 1 > max_answer_length:
            continue
          prelim.append(Prelim(f, s, e, starts[s], ends[e]))
    if v2:
      prelim.append(Prelim(null_feature, 0, 0, null_start, null_end))
    prelim.sort(key=lambda p: p.start_logit + p.end_logit, reverse=True)

    seen: set[str] = set()
    nbest: list[Nbest] = []
    starts: list[int] = []
    for p in prelim:
      if len(nbest) >= n_best_size:
        break
      span = None
      if p.start > 0:
        starts = starts or word_starts(ex.context)
        text, span = _span_text(ex, features, p, lower_case, starts)
        if text in seen:
          continue
      else:
        text = ""
      seen.add(text)
      nbest.append(Nbest(text, p.start_logit, p.end_logit, span))
    if v2 and "" not in seen:
      nbest.append(Nbest("", null_start, null_end))
    if not nbest:
      nbest.append(Nbest("empty", 0.0, 0.0))

    probs = _softmax([n.start_logit + n.end_logit for n in nbest])
    nbest_out[ex.qid] = [{"text": n.text, "probability": prob, "start_logit": n.start_logit,
                          "end_logit": n.end_logit, "span": n.span} for n, prob in zip(nbest, probs)]
    if not v2:
      predictions[ex.qid] = nbest[0].text
    else:
      best = next((n for n in nbest if n.text), Nbest("empty", 0.0, 0.0))
      score_diff = score_null - best.start_logit - best.end_logit
      null_odds[ex.qid] = score_diff
      predictions[ex.qid] = "" if score_diff > null_score_diff_threshold else best.text
  return predictions, nbest_out, null_odds


def _span_text(ex: QAExample, features: QAFeatures, p: Prelim, lower_case: bool,
               starts: Sequence[int]) -> tuple[str, tuple[int, int]]:
  """The context text of a window's token span (wordpieces joined, then get_final_text) and its
  [start, end) characters in the example's context (`starts`: its words' offsets, word_starts)."""
  tok_text = " ".join(features.tokens[p.feature][p.start:p.end + 1])
  tok_text = tok_text.replace(" ##", "").replace("##", "")
  tok_text = " ".join(tok_text.strip().split())
  orig_map = features.token_to_orig_map[p.feature]
  first, last = orig_map[p.start], orig_map[p.end]
  orig_text = " ".join(ex.doc_tokens[first:last + 1])
  start, end = final_span(tok_text, orig_text, lower_case)
  # orig_text joins the words with one space; each word sits at its own offset in the context
  offsets, at = [], 0
  for w in range(first, last + 1):
    offsets.append((at, starts[w]))
    at += len(ex.doc_tokens[w]) + 1

  def to_context(i: int) -> int:  # i: a non-space character of orig_text
    base, word_start = next((b, c) for b, c in reversed(offsets) if b <= i)
    return word_start + i - base

  return orig_text[start:end], (to_context(start), to_context(end - 1) + 1)



# ----------------------------------------------------------------------------------------------
# The official evaluation scripts.


def normalize_answer(s: str) -> str:
  """Lower-case, drop punctuation, the articles a/an/the, and extra whitespace (official script)."""
  s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
  return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
  """Token-overlap F1 of the normalized answers (v1.1 script; v2 treats empty answers, see below)."""
  pred_tokens = normalize_answer(prediction).split()
  gold_tokens = normalize_answer(ground_truth).split()
  num_same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if num_same == 0:
    return 0.0
  precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def _f1_v2(gold: str, prediction: str) -> float:
  """evaluate-v2.0's compute_f1: if either side normalizes to nothing, 1 when both do, else 0."""
  gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(prediction).split()
  if not gold_tokens or not pred_tokens:
    return float(gold_tokens == pred_tokens)
  return f1_score(prediction, gold)


def _max_over(metric: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
  return max(float(metric(prediction, g)) for g in golds)


def squad_scores(predictions: Mapping[str, str], examples: Sequence[QAExample], version: str = "v1",
                 null_odds: Mapping[str, float] | None = None,
                 na_prob_thresh: float = 1.0) -> dict[str, float]:
  """The official scores in percent over `examples` (read for evaluation: all gold answers).

  v1 (evaluate-v1.1.py): {"exact_match", "f1"}, max over the gold answers.
  v2 (evaluate-v2.0.py): also "total", and "HasAns_exact/_f1/_total" and "NoAns_exact/_f1/_total"
  where there are such questions; golds that normalize to nothing are dropped and a question
  without gold is answered only by "". With null_odds (the script's --na-prob-file): a question
  whose odds exceed na_prob_thresh counts as predicted no-answer, and best_exact(_thresh),
  best_f1(_thresh) come from find_best_thresh. A question without a prediction scores 0 and is
  warned about (evaluate-v2.0.py would leave it out of the total, or fail).
  """
  v2 = squad_version(version) == "v2"
  if not examples:
    raise InputError("squad_scores: no examples to score")
  missing = [ex.qid for ex in examples if ex.qid not in predictions]
  if missing:
    log.warning("%d unanswered question(s) will receive score 0: %s", len(missing), ", ".join(missing[:10]))
  if not v2:
    exact = f1 = 0.0
    for ex in examples:
      golds = [text for text, _ in ex.answers]
      if not golds:
        raise InputError(f"squad_scores: question id {ex.qid!r} (article {ex.title!r}) has no gold answer; "
                         "v1 scoring needs at least one (a v2 file? pass version='v2')")
      if ex.qid in predictions:
        exact += _max_over(exact_match_score, predictions[ex.qid], golds)
        f1 += _max_over(f1_score, predictions[ex.qid], golds)
    return {"exact_match": 100.0 * exact / len(examples), "f1": 100.0 * f1 / len(examples)}

  has_ans = {ex.qid: bool(ex.answers) for ex in examples}
  exact_raw: dict[str, float] = {}
  f1_raw: dict[str, float] = {}
  for ex in examples:
    golds = [text for text, _ in ex.answers if normalize_answer(text)] or [""]
    prediction = predictions.get(ex.qid)
    exact_raw[ex.qid] = 0.0 if prediction is None else _max_over(exact_match_score, prediction, golds)
    f1_raw[ex.qid] = 0.0 if prediction is None else _max_over(lambda p, g: _f1_v2(g, p), prediction, golds)
  if null_odds is not None:
    absent = [qid for qid in has_ans if qid not in null_odds]
    if absent:
      raise InputError(f"squad_scores: null_odds lacks question id(s) {', '.join(absent[:10])}")
  odds = null_odds if null_odds is not None else {qid: 0.0 for qid in has_ans}

  def thresholded(raw: dict[str, float]) -> dict[str, float]:
    return {qid: float(not has_ans[qid]) if odds[qid] > na_prob_thresh else s for qid, s in raw.items()}

  exact_t, f1_t = thresholded(exact_raw), thresholded(f1_raw)
  out: dict[str, float] = {"exact_match": 100.0 * sum(exact_t.values()) / len(exact_t),
                           "f1": 100.0 * sum(f1_t.values()) / len(f1_t), "total": len(exact_t)}
  for prefix, qids in (("HasAns", [q for q, h in has_ans.items() if h]),
                       ("NoAns", [q for q, h in has_ans.items() if not h])):
    if qids:
      out[f"{prefix}_exact"] = 100.0 * sum(exact_t[q] for q in qids) / len(qids)
      out[f"{prefix}_f1"] = 100.0 * sum(f1_t[q] for q in qids) / len(qids)
      out[f"{prefix}_total"] = len(qids)
  if null_odds is not None:
    preds = {qid: predictions.get(qid, "") for qid in has_ans}
    out["best_exact"], out["best_exact_thresh"] = _find_best_thresh(preds, exact_raw, odds, has_ans)
    out["best_f1"], out["best_f1_thresh"] = _find_best_thresh(preds, f1_raw, odds, has_ans)
  return out


def _find_best_thresh(preds: Mapping[str, str], scores: Mapping[str, float], na_probs: Mapping[str, float],
                      has_ans: Mapping[str, bool]) -> tuple[float, float]:
  """evaluate-v2.0's find_best_thresh: the null-odds threshold that would maximize the score."""
  cur_score = best_score = sum(1 for h in has_ans.values() if not h)
  best_thresh = 0.0
  for qid in sorted(na_probs, key=lambda k: na_probs[k]):
    if qid not in scores:
      continue
    if has_ans[qid]:
      diff = scores[qid]
    else:
      diff = -1 if preds[qid] else 0
    cur_score += diff
    if cur_score > best_score:
      best_score, best_thresh = cur_score, na_probs[qid]
  return 100.0 * best_score / len(scores), float(best_thresh)


def write_predictions_json(path: str | os.PathLike, predictions: Mapping[str, Any]) -> Path:
  """Writes {qid: answer_text} (the official predictions.json; also fits n-best or null odds) so
  that `path` is either its old self or the complete new file (flaxbert.atomic.write_text)."""
  return atomic.write_text(path, json.dumps(dict(predictions), indent=4) + "\n")
