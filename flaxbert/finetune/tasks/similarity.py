"""Sentence similarity with a bi-encoder: each sentence becomes one vector (mean or [CLS] pooling).

Training pairs (text_a, text_b, score) tune the encoder so that the cosine of the two vectors
matches score / config.score_scale (sentence-transformers' CosineSimilarityLoss: squared error).
Scores are Pearson and Spearman correlations of the cosine with the gold score, the usual STS
evaluation. The cross-encoder form of the same data is the glue_stsb task; `flaxbert embed`
(flaxbert.finetune.embed) turns sentences into vectors with any checkpoint or a fine-tuned workdir.
"""
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from flaxbert.errors import InputError
from flaxbert.finetune.tasks import readers, scores, tfds_source
from flaxbert.finetune.tasks.encoder import EncoderTask
from flaxbert.finetune.tasks.layout import Features, Specials, pack_pair, rows, stack


def encode_sentences(texts: Sequence[str], tokenizer, length: int) -> tuple[np.ndarray, np.ndarray]:
  """[CLS] text [SEP], truncated to `length`: (input_ids, input_mask) [N, length]."""
  specials = Specials.of(tokenizer)
  ids, masks = [], []
  for pieces in tokenizer.encode_batch(texts):
    i, _, m = pack_pair(pieces[:length - 2], None, specials, length)
    ids.append(i), masks.append(m)
  return stack(ids), stack(masks)


def cosine(a: np.ndarray, b: np.ndarray):
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return np.sum(a * b, axis=-1)


class Similarity(EncoderTask):
  kind = "similarity"
  head = "embedding"

  def read_examples(self, path: str, training: bool) -> list:
    del training
    c = self.config
    if tfds_source.is_tfds(path):
      return tfds_source.read_text_pairs(path, None)
    return readers.read_pairs(path, c.text_a_column, c.text_b_column, c.label_column)

  def check(self, sets) -> None:
    for _, examples in sets:
      for e in examples:
        if e.text_b is None:
          raise InputError(f"{e.source}: a sentence pair is needed (text_b_column {self.config.text_b_column!r})")

  def featurize(self, examples: Sequence, tokenizer, training: bool) -> Features:
    length = self.config.max_seq_length
    ids_a, mask_a = encode_sentences([e.text_a for e in examples], tokenizer, length)
    ids_b, mask_b = encode_sentences([e.text_b or "" for e in examples], tokenizer, length)
    label = np.asarray([np.nan if e.label is None else float(e.label) for e in examples], np.float32)
    return Features({"input_ids": ids_a, "input_mask": mask_a, "input_ids_b": ids_b, "input_mask_b": mask_b,
                     "label": label / np.float32(self.config.score_scale)})

  def head_settings(self) -> dict:
    return {"pooling": self.config.pooling}

  def head_loss(self, outputs: dict, batch: dict) -> dict:
    a, b = outputs["embedding"], outputs["embedding_b"]
    cos = jnp.sum(a * b, -1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1), 1e-12)
    w = rows(batch)
    label = jnp.nan_to_num(batch["label"])
    return {"task_loss_sum": jnp.sum(jnp.square(cos - label) * w), "task_count": jnp.sum(w)}

  def predict(self, examples, features, outputs) -> list:
    return [float(x) for x in cosine(outputs["embedding"], outputs["embedding_b"])]

  def score(self, examples, features, outputs, predictions) -> dict:
    gold = features.arrays["label"]
    if np.isnan(gold).any():
      raise InputError(f"{examples[0].source.rsplit(':', 1)[0]}: evaluation needs a score for every pair")
    return scores.glue_scores(("pearson", "spearman"),
                              cosine(outputs["embedding"], outputs["embedding_b"]), gold)
