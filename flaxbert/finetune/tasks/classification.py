"""Sequence classification and regression, one sentence or a pair: the GLUE tasks and your own files.

GLUE TSVs are read with their shipped column layout (flaxbert.finetune.tasks.glue_tsv.GLUE_FORMATS);
`.csv`/`.jsonl` files (and `.tsv` files with a header row of the `classification` task) by column
name (config.text_a_column, text_b_column, label_column). The `classification` task learns its
label set from the training file (any strings, at least two classes) and records it in the
workdir; with `multi_label` an example holds any number of them (a JSON list, or a cell split on
`label_delimiter`), with `regression` a label is a number. Inputs are `[CLS] a [SEP] b [SEP]`,
truncated longest-first as the original run_classifier.py (the number of truncated examples is
logged). The head is a dense layer on the pooled [CLS]; rows are packed (flaxbert.training.packing),
several examples each, so a batch holds about batch_size examples in fewer rows. The loss is the
cross-entropy (single label), the mean binary cross-entropy over the classes (multi-label) or the
squared error (regression, STS-B) — HF's BertForSequenceClassification with problem_type
single_label_classification, multi_label_classification or regression. A regression head's bias
starts at the training labels' mean (`initial_weights`), not at 0. Scores: GLUE's per GLUE
task; accuracy, macro-F1 and per-class F1; micro/macro-F1 at a threshold chosen on the (first) dev
file; Pearson, Spearman and MSE. Predictions give every label's probability.
"""
import logging
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from flaxbert.errors import InputError
from flaxbert.finetune.tasks import glue_tsv, readers, scores, tfds_source
from flaxbert.finetune.tasks.base import existing
from flaxbert.finetune.tasks.encoder import EncoderTask
from flaxbert.finetune.tasks.layout import (Features, Specials, cross_entropy, pack_pair, slot_weights, softmax,
                                            stack, truncate_pair)

log = logging.getLogger("flaxbert")

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")  # HF's names


class Classification(EncoderTask):
  kind = "classification"
  head = "sequence"
  packed = True  # several examples per row (flaxbert.training.packing); outputs come back per example

  def __init__(self, config):
    super().__init__(config)
    self.glue = glue_tsv.GLUE_FORMATS[config.task[len("glue_"):]] if config.task.startswith("glue_") else None
    if self.glue is not None:
      self.regression, self.multi_label = self.glue.labels is None, False
    else:
      self.regression, self.multi_label = bool(config.regression), bool(config.multi_label)
    self.labels: list[str] = list(self.glue.labels) if self.glue is not None and self.glue.labels else []
    self.threshold: float | None = None  # multi-label: the decision threshold (chosen on dev, or recorded)
    self._recorded_threshold = False
    self.label_mean: float | None = None  # regression: the training labels' mean (the head's initial bias)

  @property
  def problem_type(self) -> str:
    return PROBLEM_TYPES[2 if self.regression else 1 if self.multi_label else 0]

  def check_config(self) -> None:
    super().check_config()
    if self.regression and self.multi_label:
      raise InputError("regression and multi_label: expected at most one of them to be true")
    if self.glue is None and not self.config.label_column:
      raise InputError("label_column: required (the column of the label, the labels or the score)")

  # --- data -------------------------------------------------------------------------------------------
  def read(self, path: str, training: bool, field: str) -> list:
    path = existing(path, field)
    if tfds_source.is_tfds(path):
      return tfds_source.read_text_pairs(path, self.labels)
    if self.glue is not None and not path.endswith((".csv", ".jsonl")):
      return glue_tsv.read_glue(self.config.task[len("glue_"):], path, skip_malformed=self.config.skip_malformed_rows)
    c = self.config
    labelled = None if field == "--input" else True  # a file to predict may come without labels
    examples = readers.read_table(path, c.text_a_column, c.text_b_column or None, c.label_column, labelled,
                                  multi_label=self.multi_label, delimiter=c.get("label_delimiter"))
    return [readers.with_score(e, c.label_column) for e in examples] if self.regression else examples

  def learn(self, train) -> None:
    unlabelled = [e for e in train if e.label is None]
    if unlabelled:
      raise InputError(f"{unlabelled[0].source}: training examples need a label (label_column "
                       f"{self.config.label_column!r}; {len(unlabelled)} without)")
    if self.regression:
      self.label_mean = float(np.mean([float(e.label) for e in train]))
      return
    if self.labels:  # GLUE: the task's own label set
      return
    names = {name for e in train for name in (e.label if self.multi_label else (e.label,))}
    if len(names) < 2:
      where = train[0].source.rsplit(":", 1)[0]
      raise InputError(f"{where}: column {self.config.label_column!r} holds {len(names)} class(es) "
                       f"({sorted(names)}) over all {len(train)} rows; a classifier needs at least 2")
    self.labels = _ordered(names)

  def check(self, sets) -> None:
    if self.regression:
      return
    known = set(self.labels)
    for name, examples in sets:
      for e in examples:
        got = () if e.label is None else (e.label if self.multi_label else (e.label,))
        unknown = sorted(set(got) - known)
        if unknown:
          raise InputError(f"{e.source}: label(s) {unknown} in column {self.config.label_column!r} of the {name} "
                           f"data are not in the training label set {self.labels}")

  def state(self) -> dict:
    return {"labels": self.labels, "regression": self.regression, "multi_label": self.multi_label}

  def load_state(self, state: dict) -> None:
    self.labels, self.regression = list(state["labels"]), bool(state["regression"])
    self.multi_label = bool(state.get("multi_label", False))  # flaxbert 0.1.0/0.2.0 had no multi-label

  def restore_settings(self, record: dict) -> None:
    super().restore_settings(record)
    threshold = record.get("defaults", {}).get("threshold")
    if threshold is not None:
      self.threshold, self._recorded_threshold = float(threshold), True

  def learned_defaults(self) -> dict:
    return {"threshold": self.threshold} if self.multi_label and self.threshold is not None else {}

  def hf_labels(self) -> tuple[list[str], str | None, float | None]:
    return (["LABEL_0"] if self.regression else self.labels), self.problem_type, self.threshold

  def load_hf_labels(self, labels: list[str], problem_type: str | None, threshold: float | None, source: str) -> None:
    if problem_type not in PROBLEM_TYPES:
      raise InputError(f"{source}: problem_type {problem_type!r}; expected one of {', '.join(PROBLEM_TYPES)}")
    regression, multi_label = problem_type == "regression", problem_type == "multi_label_classification"
    if regression != (len(labels) == 1):
      raise InputError(f"{source}: problem_type {problem_type} with {len(labels)} label(s) in id2label")
    if self.glue is not None:
      if (regression, multi_label) != (self.regression, False) or len(labels) != max(len(self.labels), 1):
        raise InputError(f"{source}: a {problem_type} model with {len(labels)} label(s); {self.config.task} is "
                         f"{self.problem_type} with {max(len(self.labels), 1)}")
    else:
      self.regression, self.multi_label, self.labels = regression, multi_label, ([] if regression else list(labels))
    self.threshold, self._recorded_threshold = threshold, threshold is not None

  @property
  def num_outputs(self) -> int:
    return 1 if self.regression else len(self.labels)

  def initial_weights(self, fresh_shapes: dict, loaded):
    """The encoder's pretrained weights and, for a regression, the head's bias at the training
    labels' mean.

    Adam moves a scalar by about the learning rate a step, so a bias started at 0 ends a short
    fine-tuning run (lr 5e-5, a few hundred steps) within about 0.005 of it. The offset of targets
    such as STS-B's 0–5 (mean near 2.7) must then come from the classifier's weights times the tanh
    pooler, which spends that bounded range on the offset: predictions top out well below the
    highest gold scores and pile up there as the pooler saturates, and dropout on the pooled vector
    pulls them further towards the bias. Started at the mean, the bias leaves the weights only the
    deviations to produce. A classification head starts as transformers' (bias 0).
    """
    taken, merge = super().initial_weights(fresh_shapes, loaded)
    if self.regression and self.label_mean is not None:
      taken = {**taken, "classifier/bias": np.full((1,), self.label_mean, np.float32)}
    return taken, merge

  def featurize(self, examples: Sequence, tokenizer, training: bool) -> Features:
    specials, length = Specials.of(tokenizer), self.config.max_seq_length
    ids_a = tokenizer.encode_batch([e.text_a for e in examples])
    ids_b = tokenizer.encode_batch([e.text_b or "" for e in examples])
    ids, segments, masks, cut = [], [], [], 0
    for e, a, b in zip(examples, ids_a, ids_b):
      a, b = list(a), (list(b) if e.text_b is not None else None)
      cut += truncate_pair(a, b, length - (3 if b is not None else 2))
      i, s, m = pack_pair(a, b, specials, length)
      ids.append(i), segments.append(s), masks.append(m)
    if cut:
      log.info("%d of %d examples were longer than max_seq_length %d and were truncated (longest side first)",
               cut, len(examples), length)
    return Features({"input_ids": stack(ids), "segment_ids": stack(segments), "input_mask": stack(masks),
                     "label": self._label_array(examples)}, meta={"truncated": cut})

  def _label_array(self, examples: Sequence) -> np.ndarray:
    """[N] class ids (int32) or scores (float32), or [N, K] multi-hot rows (float32); 0 when unlabelled."""
    if self.regression:
      return np.asarray([0.0 if e.label is None else float(e.label) for e in examples], np.float32)
    index = {label: i for i, label in enumerate(self.labels)}
    if not self.multi_label:
      return np.asarray([0 if e.label is None else index[str(e.label)] for e in examples], np.int32)
    hot = np.zeros((len(examples), len(self.labels)), np.float32)
    for n, e in enumerate(examples):
      hot[n, [index[name] for name in (e.label or ())]] = 1.0
    return hot

  def head_loss(self, outputs: dict, batch: dict) -> dict:
    """Over the examples of packed rows: logits [B, K, C], label [B, K] (multi-label [B, K, C])."""
    w, logits = slot_weights(batch), outputs["logits"]
    if self.regression:
      err = jnp.square(logits[..., 0] - batch["label"].astype(jnp.float32))
      return {"task_loss_sum": jnp.sum(err * w), "task_count": jnp.sum(w)}
    if self.multi_label:
      target = batch["label"].astype(jnp.float32)
      bce = jnp.mean(jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits))), axis=-1)
      return {"task_loss_sum": jnp.sum(bce * w), "task_count": jnp.sum(w)}
    nll = cross_entropy(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"task_loss_sum": jnp.sum(nll * w), "task_count": jnp.sum(w), "task_correct": jnp.sum(correct * w)}

  # --- evaluation and prediction -------------------------------------------------------------------
  def probabilities(self, logits: np.ndarray) -> np.ndarray:
    if self.multi_label:
      return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    return softmax(logits)

  @property
  def decision_threshold(self) -> float:
    """Multi-label: the threshold chosen on dev (or recorded), else 0.5."""
    return 0.5 if self.threshold is None else self.threshold

  def calibrate(self, examples, features, outputs) -> None:
    """Multi-label during training: the threshold with the best micro-F1 on the first dev file (a
    threshold recorded in the workdir is kept as it is)."""
    if self.multi_label and not self._recorded_threshold:
      self.threshold = scores.best_threshold(self.probabilities(outputs["logits"]), features.arrays["label"])

  def predict(self, examples, features, outputs) -> list:
    logits = outputs["logits"]
    if self.regression:
      return [{"score": float(x)} for x in logits[:, 0]]
    p = self.probabilities(logits)
    if self.multi_label:
      return [{"labels": [l for l, q in zip(self.labels, row) if q >= self.decision_threshold],
               "probabilities": dict(zip(self.labels, map(float, row)))} for row in p]
    return [{"label": self.labels[int(np.argmax(row))], "probabilities": dict(zip(self.labels, map(float, row)))}
            for row in p]

  def score(self, examples, features, outputs, predictions) -> dict:
    missing = sum(e.label is None for e in examples)
    if missing:
      raise InputError(f"{examples[0].source.rsplit(':', 1)[0]}: {missing} examples have no label; "
                       "evaluation needs a labelled file (use `flaxbert predict` for unlabelled ones)")
    gold, logits = features.arrays["label"], outputs["logits"]
    if self.glue is not None:
      preds = logits[:, 0] if self.regression else np.argmax(logits, -1)
      return scores.glue_scores(self.glue.metrics, preds, gold)
    if self.regression:
      return scores.regression_scores(logits[:, 0], gold)
    if self.multi_label:
      t = self.decision_threshold
      return {**scores.multi_label_scores(self.probabilities(logits) >= t, gold > 0.5, self.labels), "threshold": t}
    return scores.class_scores(np.argmax(logits, -1), gold, self.labels)


def _ordered(names: set[str]) -> list[str]:
  """Class names in a stable order: numerically when all are integers ("2" before "10"), else as text."""
  try:
    return sorted(names, key=int)
  except ValueError:
    return sorted(names)
