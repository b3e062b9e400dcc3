"""Extractive summarization, BertSumExt style, as a fine-tuning task; and its unsupervised form.

Documents become `[CLS] s1 [SEP] [CLS] s2 [SEP] …` with alternating segment ids
(flaxbert.finetune.tasks.summarization); each sentence's vector (its [CLS] state, or the mean of its
wordpieces' with pooling="mean") goes through `inter_sentence_layers` Transformer layers over the
document's sentences (BertSumExt's, 2 by default) and a dense layer scores it; the loss is
binary cross-entropy against greedy-ROUGE oracle labels, averaged over real sentences. A summary
is the top `summary_sentences` sentences with trigram blocking, in document order; scores are
ROUGE-1/2/L F1 × 100 (Google's rouge-score, stemmer on). Without training data
(`train_path` unset) sentences are ranked by cosine similarity to the document's centroid
embedding from the pretrained encoder (`score_unsupervised`).
"""
import logging
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from flaxbert.finetune.tasks import scores, summarization
from flaxbert.finetune.tasks.encoder import EncoderTask
from flaxbert.finetune.tasks.layout import Features, rows

log = logging.getLogger("flaxbert")


class ExtractiveSummarization(EncoderTask):
  kind = "extractive_summarization"
  head = "sentences"

  def read_examples(self, path: str, training: bool) -> list:
    split = self.config.train_split if training else self.config.eval_split
    return summarization.read_summaries(path, split, drop_headline=self.config.drop_headline)

  def head_settings(self) -> dict:
    return {"pooling": self.config.pooling, "inter_sentence_layers": self.config.inter_sentence_layers}

  def needs_training(self) -> bool:
    return bool(self.config.train_path)

  def featurize(self, examples: Sequence, tokenizer, training: bool) -> Features:
    c = self.config
    f = summarization.featurize(examples, tokenizer, max_seq_length=c.max_seq_length,
                                max_sentences=c.max_sentences, oracle_sentences=c.oracle_sentences)
    return Features({"input_ids": f.input_ids, "segment_ids": f.segment_ids, "input_mask": f.input_mask,
                     "cls_positions": f.cls_positions, "sentence_ids": f.sentence_ids,
                     "sentence_mask": f.sentence_mask, "sentence_labels": f.sentence_labels}, meta=f)

  def _weights(self, batch: dict):
    return batch["sentence_mask"].astype(jnp.float32) * rows(batch)[:, None]

  def head_loss(self, outputs: dict, batch: dict) -> dict:
    x, y = outputs["scores"], batch["sentence_labels"].astype(jnp.float32)
    bce = jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))  # sigmoid cross-entropy, stable
    w = self._weights(batch)
    return {"task_loss_sum": jnp.sum(bce * w), "task_count": jnp.sum(w)}

  def counts(self, batch: dict) -> dict:
    return {"task_count": jnp.sum(self._weights(batch))}

  def predict(self, examples, features, outputs) -> list:
    sentence_scores = np.where(features.arrays["sentence_mask"] > 0, outputs["scores"], -np.inf)
    return summarization.summaries_from_scores(examples, features.meta, sentence_scores,
                                               self.config.summary_sentences, self.config.block_trigrams)

  def score(self, examples, features, outputs, predictions) -> dict:
    return scores.rouge_scores(predictions, [e.summary for e in examples])

  def score_unsupervised(self, examples: Sequence, embedder) -> tuple[dict, list[str]]:
    """ROUGE of centroid-ranked summaries (no training): (scores, summaries)."""
    c = self.config
    summaries = []
    for e in examples:
      vectors = embedder.embed(list(e.sentences))
      chosen = summarization.select(summarization.rank_by_centroid(vectors), list(e.sentences),
                                    c.summary_sentences, c.block_trigrams)
      summaries.append(" ".join(e.sentences[i] for i in chosen))
    return scores.rouge_scores(summaries, [e.summary for e in examples]), summaries
