"""Sequence classification and regression, one sentence or a pair: the GLUE tasks and custom files.

GLUE TSVs are read with their shipped column layout (flaxbert.finetune.tasks.glue_tsv.GLUE_FORMATS);
`.csv`/`.jsonl` files (and `.tsv` files of a custom task) by column name (config.text_a_column,
text_b_column, label_column). Inputs are `[CLS] a [SEP] b [SEP]`, truncated longest-first as the
original run_classifier.py (the number of truncated examples is logged). The head is a dense
layer on the pooled [CLS]; rows are packed (flaxbert.training.packing), several examples each,
so a batch holds about batch_size examples in fewer rows; the loss is cross-entropy, or the squared error for STS-B
(HF's BertForSequenceClassification with num_labels=1). Scores are GLUE's per task.
"""
import logging
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from flaxbert.errors import InputError
from flaxbert.finetune.tasks import glue_tsv, readers, scores, tfds_source
from flaxbert.finetune.tasks.encoder import EncoderTask
from flaxbert.finetune.tasks.layout import (Features, Specials, cross_entropy, pack_pair, slot_weights, stack,
                                            truncate_pair)

log = logging.getLogger("flaxbert")


class Classification(EncoderTask):
  kind = "classification"
  head = "sequence"
  packed = True  # several examples per row (flaxbert.training.packing); outputs come back per example

  def __init__(self, config):
    super().__init__(config)
    self.glue = glue_tsv.GLUE_FORMATS[config.task[len("glue_"):]] if config.task.startswith("glue_") else None
    self.regression = self.glue is not None and self.glue.labels is None
    self.labels: list[str] = list(self.glue.labels) if self.glue is not None and self.glue.labels else []
    self.metric_names = tuple(self.glue.metrics) if self.glue is not None else ("accuracy",)

  def read_examples(self, path: str, training: bool) -> list:
    del training
    if tfds_source.is_tfds(path):
      return tfds_source.read_text_pairs(path, self.labels)
    if path.endswith((".csv", ".jsonl")) or self.glue is None:
      c = self.config
      return readers.read_table(path, c.text_a_column, c.text_b_column or None, c.label_column)
    return glue_tsv.read_glue(self.config.task[len("glue_"):], path, skip_malformed=self.config.skip_malformed_rows)

  def learn(self, train) -> None:
    unlabelled = [e for e in train if e.label is None]
    if unlabelled:
      raise InputError(f"{unlabelled[0].source}: training examples need a label (label_column "
                       f"{self.config.label_column!r}; {len(unlabelled)} without)")
    if not self.regression and not self.labels:  # a custom task: the label set is the training file's
      self.labels = sorted({str(e.label) for e in train})

  def check(self, sets) -> None:
    if self.regression:
      return
    for name, examples in sets:
      unknown = sorted({str(e.label) for e in examples if e.label is not None} - set(self.labels))
      if unknown:
        where = next(e.source for e in examples if str(e.label) in unknown)
        raise InputError(f"{where}: label(s) {unknown} of the {name} data are not in the training "
                         f"label set {self.labels}")

  def state(self) -> dict:
    return {"labels": self.labels, "regression": self.regression}

  def load_state(self, state: dict) -> None:
    self.labels, self.regression = list(state["labels"]), bool(state["regression"])

  @property
  def num_outputs(self) -> int:
    return 1 if self.regression else len(self.labels)

  def featurize(self, examples: Sequence, tokenizer, training: bool) -> Features:
    specials, length = Specials.of(tokenizer), self.config.max_seq_length
    ids_a = tokenizer.encode_batch([e.text_a for e in examples])
    ids_b = tokenizer.encode_batch([e.text_b or "" for e in examples])
    index = {label: i for i, label in enumerate(self.labels)}
    ids, segments, masks, labels, cut = [], [], [], [], 0
    for e, a, b in zip(examples, ids_a, ids_b):
      a, b = list(a), (list(b) if e.text_b is not None else None)
      cut += truncate_pair(a, b, length - (3 if b is not None else 2))
      i, s, m = pack_pair(a, b, specials, length)
      ids.append(i), segments.append(s), masks.append(m)
      if e.label is None:
        labels.append(0)
      else:
        labels.append(float(e.label) if self.regression else index[str(e.label)])
    if cut:
      log.info("%d of %d examples were longer than max_seq_length %d and were truncated (longest side first)",
               cut, len(examples), length)
    label_dtype = np.float32 if self.regression else np.int32
    return Features({"input_ids": stack(ids), "segment_ids": stack(segments), "input_mask": stack(masks),
                     "label": np.asarray(labels, label_dtype).reshape(len(examples))},
                    meta={"truncated": cut})

  def head_loss(self, outputs: dict, batch: dict) -> dict:
    """Over the examples of packed rows: logits [B, K, C], label and label_mask [B, K]."""
    w = slot_weights(batch)
    if self.regression:
      err = jnp.square(outputs["logits"][..., 0] - batch["label"].astype(jnp.float32))
      return {"task_loss_sum": jnp.sum(err * w), "task_count": jnp.sum(w)}
    nll = cross_entropy(outputs["logits"], batch["label"])
    correct = (jnp.argmax(outputs["logits"], -1) == batch["label"]).astype(jnp.float32)
    return {"task_loss_sum": jnp.sum(nll * w), "task_count": jnp.sum(w), "task_correct": jnp.sum(correct * w)}

  def predict(self, examples, features, outputs) -> list:
    logits = outputs["logits"]
    if self.regression:
      return [float(x) for x in logits[:, 0]]
    return [self.labels[i] for i in np.argmax(logits, -1)]

  def score(self, examples, features, outputs, predictions) -> dict:
    missing = sum(e.label is None for e in examples)
    if missing:
      raise InputError(f"{examples[0].source.rsplit(':', 1)[0]}: {missing} examples have no label; "
                       "evaluation needs a labelled file (use `flaxbert predict` for unlabelled ones)")
    gold = features.arrays["label"]
    preds = outputs["logits"][:, 0] if self.regression else np.argmax(outputs["logits"], -1)
    return scores.glue_scores(self.metric_names, preds, gold)
