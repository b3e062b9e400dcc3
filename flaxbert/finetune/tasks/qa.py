"""Extractive question answering (SQuAD v1.1 / v2.0) as a fine-tuning task.

Reading and doc-stride windows: flaxbert.finetune.tasks.squad (run_squad.py's algorithm); n-best span
search, answer text recovery and the official scores: flaxbert.finetune.tasks.squad_post. The head is a
dense layer giving start and end logits per position; the loss is the mean of the start and end
cross-entropies (windows without the answer point at [CLS], as the original). Predictions go to
WORKDIR/predictions.json in the official format (and null odds for v2 to null_odds.json);
`flaxbert predict` writes one JSON object per question: the answer, its character offsets in the
context and its probability.

Windows shorter than max_seq_length are packed several to a row (flaxbert.training.packing;
`max_examples_per_row`), each attending only to itself. The start and end softmaxes run over each
window's own tokens: the original's also spanned the padding of its row (which trains the padding
to low logits and changes nothing else), and its n-best search could pick padding positions and
then drop them; here a window's logits past its end are -inf, so the n-best holds real tokens.
"""
import logging
import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp

from flaxbert.finetune.tasks import squad, squad_post, tfds_source
from flaxbert.finetune.tasks.encoder import EncoderTask
from flaxbert.finetune.tasks.layout import Features, slot_weights

log = logging.getLogger("flaxbert")


class QuestionAnswering(EncoderTask):
  kind = "qa"
  head = "span"
  prediction_file = "predictions.json"
  packed = True  # several windows a row (flaxbert.training.packing); logits come back per window
  token_outputs = {"start_logits": float("-inf"), "end_logits": float("-inf")}

  def __init__(self, config):
    super().__init__(config)
    self.version = "v2" if config.task == "squad_v2" else "v1"
    self.lower_case = True

  def read_examples(self, path: str, training: bool) -> list:
    if tfds_source.is_tfds(path):  # the same checks as a file's, errors naming the tfds: source
      return squad.squad_examples(tfds_source.squad_json(path)["data"], path, self.version, training)
    return squad.read_squad(path, self.version, training)

  def featurize(self, examples: Sequence, tokenizer, training: bool) -> Features:
    c = self.config
    self.lower_case = tokenizer.lower_case
    f = squad.featurize(examples, tokenizer, c.max_seq_length, c.doc_stride, c.max_query_length, training=training)
    return Features({"input_ids": f.input_ids, "segment_ids": f.segment_ids, "input_mask": f.input_mask,
                     "start_positions": f.start_positions, "end_positions": f.end_positions}, meta=f)

  def head_loss(self, outputs: dict, batch: dict) -> dict:
    """Packed rows: logits [B, T]; start/end_positions [B, K], within each window (slot)."""
    nll = 0.5 * (_window_nll(outputs["start_logits"], batch["start_positions"], batch)
                 + _window_nll(outputs["end_logits"], batch["end_positions"], batch))
    w = slot_weights(batch)
    return {"task_loss_sum": jnp.sum(nll * w), "task_count": jnp.sum(w)}

  def predict(self, examples, features, outputs) -> dict:
    c = self.config
    predictions, nbest, null_odds = squad_post.predict_answers(
        examples, features.meta, outputs["start_logits"], outputs["end_logits"], c.n_best_size,
        c.max_answer_length, self.version, c.null_score_diff_threshold if self.version == "v2" else 0.0,
        self.lower_case)
    return {"predictions": predictions, "null_odds": null_odds, "nbest": nbest}

  def records(self, examples, features, outputs, predictions) -> list:
    """Per question: the answer as it stands in the context, its [start, end) characters there
    (null for no answer) and its probability among the n-best candidates (run_squad's nbest)."""
    out = []
    for e in examples:
      answer = predictions["predictions"][e.qid]
      entry = next((n for n in predictions["nbest"][e.qid] if n["text"] == answer),
                   {"span": None, "probability": 0.0})  # v2's "empty" fallback is no candidate
      start, end = entry["span"] or (None, None)
      out.append({"id": e.qid, "answer": answer if start is None else e.context[start:end], "start": start,
                  "end": end, "probability": entry["probability"]})
    return out

  def score(self, examples, features, outputs, predictions) -> dict:
    """The scores of predictions.json as written; the null odds only feed best_exact/best_f1.

    predict_answers already chose answer or "" with null_score_diff_threshold, so thresholding
    the odds again (evaluate-v2.0.py's na_prob_thresh) would score other answers than the file's.
    """
    return squad_post.squad_scores(predictions["predictions"], examples, self.version,
                                   predictions["null_odds"] or None, na_prob_thresh=math.inf)

  def write_predictions(self, path: Path, examples, predictions: dict) -> None:
    squad_post.write_predictions_json(path, predictions["predictions"])
    if predictions["null_odds"]:
      squad_post.write_predictions_json(path.with_name("null_odds.json"), predictions["null_odds"])


def _window_nll(logits: jax.Array, positions: jax.Array, batch: dict) -> jax.Array:
  """[B, K]: -log softmax over each window's own tokens (input_mask == slot + 1) at its position."""
  slots = positions.shape[1]
  member = batch["input_mask"][:, None, :] == jnp.arange(1, slots + 1)[None, :, None]  # [B, K, T]
  logits = logits.astype(jnp.float32)
  norm = jax.nn.logsumexp(jnp.where(member, logits[:, None, :], -1e30), axis=-1)
  target = jnp.take_along_axis(logits, positions + batch["cls_positions"], axis=1)
  return jnp.where(batch["label_mask"] > 0, norm - target, 0.0)
