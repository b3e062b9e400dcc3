"""Token classification (NER) from CoNLL-style files with BIO/IOB2 tags.

Each word is WordPiece-tokenized on its own; the label sits on the word's first wordpiece and the
other pieces are ignored by the loss and by prediction (BERT paper, section 5.3). A sentence whose
wordpieces do not fit in max_seq_length is cut into consecutive windows of whole words, so every
word gets a prediction (nothing is silently dropped from the score); a single word longer than a
window keeps its first pieces. Short sentences are packed several to a row (flaxbert.training.packing;
`max_examples_per_row`), each attending only to itself. Scores are entity-level precision/recall/F1 with seqeval's
default (conlleval) semantics. The tag set is the training file's; a dev tag outside it is an error.
"""
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from flaxbert.errors import InputError
from flaxbert.finetune.tasks import readers, scores, tfds_source
from flaxbert.finetune.tasks.encoder import EncoderTask
from flaxbert.finetune.tasks.layout import Features, Specials, cross_entropy, pack_pair, rows, softmax, stack


class TokenClassification(EncoderTask):
  kind = "ner"
  head = "token"
  packed = True  # several sentences a row (flaxbert.training.packing); logits come back per sentence
  token_arrays = {"labels": -1}
  token_outputs = {"logits": 0.0}  # past a sentence's end: never read (labels there are -1)

  def __init__(self, config):
    super().__init__(config)
    self.labels: list[str] = []

  def read_examples(self, path: str, training: bool) -> list:
    del training
    if tfds_source.is_tfds(path):
      return tfds_source.read_tagged(path)
    return readers.read_conll(path)

  def learn(self, train) -> None:
    tags = {t for e in train for t in (e.tags or ())}
    if not tags:
      raise InputError(f"{train[0].source.rsplit(':', 1)[0] if train else 'train_path'}: no tags in the training file")
    self.labels = ["O"] + sorted(tags - {"O"})

  def check(self, sets) -> None:
    for name, examples in sets:
      unknown = sorted({t for e in examples for t in (e.tags or ())} - set(self.labels))
      if unknown:
        e, i = next((e, i) for e in examples for i, t in enumerate(e.tags or ()) if t in unknown)
        path, _, first = e.source.rpartition(":")
        where = f"{path}:{int(first) + i}" if first.isdigit() else e.source  # one token a line
        raise InputError(f"{where}: tag(s) {unknown} of the {name} data are not among the training file's tags "
                         f"(tags: {self.labels}); the label sets must agree")

  def state(self) -> dict:
    return {"labels": self.labels}

  def load_state(self, state: dict) -> None:
    self.labels = list(state["labels"])

  def hf_labels(self) -> tuple[list[str], str | None, float | None]:
    return self.labels, None, None

  def load_hf_labels(self, labels: list[str], problem_type: str | None, threshold: float | None, source: str) -> None:
    del problem_type, threshold, source
    self.labels = list(labels)

  @property
  def num_outputs(self) -> int:
    return len(self.labels)

  def featurize(self, examples: Sequence, tokenizer, training: bool) -> Features:
    specials, length = Specials.of(tokenizer), self.config.max_seq_length
    unk = tokenizer.convert_tokens_to_ids(["[UNK]"])[0]
    index = {t: i for i, t in enumerate(self.labels)}
    room = length - 2
    ids, segments, masks, labels, windows = [], [], [], [], []
    for n, e in enumerate(examples):
      pieces = [p[:room] or [unk] for p in tokenizer.encode_batch(e.words)]
      start = 0
      while start < len(pieces) or (start == 0 and not pieces):
        end, used = start, 0
        while end < len(pieces) and used + len(pieces[end]) <= room:
          used += len(pieces[end])
          end += 1
        flat, label_row, firsts = [], [], []
        for w in range(start, end):
          firsts.append(1 + len(flat))
          tag = e.tags[w] if e.tags is not None else None
          label_row += [index[tag] if tag is not None else -1] + [-1] * (len(pieces[w]) - 1)
          flat += pieces[w]
        i, s, m = pack_pair(flat, None, specials, length)
        ids.append(i), segments.append(s), masks.append(m)
        labels.append([-1] + label_row + [-1] * (length - 1 - len(label_row)))
        windows.append((n, start, firsts))
        if end == start:  # an empty sentence
          break
        start = end
    return Features({"input_ids": stack(ids), "segment_ids": stack(segments), "input_mask": stack(masks),
                     "labels": stack(labels)}, meta={"windows": windows})

  def head_loss(self, outputs: dict, batch: dict) -> dict:
    labels = batch["labels"]
    w = (labels >= 0).astype(jnp.float32) * rows(batch)[:, None]
    nll = cross_entropy(outputs["logits"], labels)
    correct = (jnp.argmax(outputs["logits"], -1) == labels).astype(jnp.float32)
    return {"task_loss_sum": jnp.sum(nll * w), "task_count": jnp.sum(w), "task_correct": jnp.sum(correct * w)}

  def counts(self, batch: dict) -> dict:
    return {"task_count": jnp.sum((batch["labels"] >= 0).astype(jnp.float32) * rows(batch)[:, None])}

  def predict(self, examples, features, outputs) -> list:
    """Per sentence: its words, each word's tag (read at its first wordpiece) and that tag's probability."""
    p = softmax(outputs["logits"])
    best, top = np.argmax(p, -1), np.max(p, -1)
    tags = [[None] * len(e.words) for e in examples]
    probabilities = [[None] * len(e.words) for e in examples]
    for row, (n, start, firsts) in enumerate(features.meta["windows"]):
      for k, pos in enumerate(firsts):
        tags[n][start + k] = self.labels[best[row, pos]]
        probabilities[n][start + k] = float(top[row, pos])
    return [{"tokens": list(e.words), "labels": t, "probabilities": p}
            for e, t, p in zip(examples, tags, probabilities)]

  def score(self, examples, features, outputs, predictions) -> dict:
    if any(e.tags is None for e in examples):
      raise InputError(f"{examples[0].source.rsplit(':', 1)[0]}: evaluation needs tagged sentences")
    return scores.entity_scores([list(e.tags) for e in examples], [p["labels"] for p in predictions])
