"""BERT with a task head, and the encoder weights carried over from a pretrained checkpoint.

`BertForTask(config, head, num_outputs)` reads a batch dict (`input_ids`, `segment_ids`,
`input_mask`, plus `cls_positions` for sentence scoring) and returns a dict of outputs:
  sequence   dropout + dense on the pooled [CLS] of each example of a packed row (`position_ids`,
             `cls_positions` [B, K]; flaxbert.training.packing) → logits [B, K, C]
             (HF BertForSequenceClassification, one example per row)
  token      dropout + dense on every position of (packed) rows → logits [B, T, C] (BertForTokenClassification)
  span       dense to 2 on every position (no dropout)   → start_logits, end_logits [B, T] (BertForQuestionAnswering)
  sentences  each sentence's vector (its [CLS] state, or with pooling="mean" the mean of its
             wordpieces' states), `inter_sentence_layers` Transformer layers over the sentence
             vectors plus sinusoidal sentence positions (BertSumExt; 0 layers: BertSum's linear
             "classifier"), dense to 1                   → scores [B, S]
  embedding  mean (over the mask) or [CLS] pooling       → embedding [B, H]; with `input_ids_b` in
             the batch also embedding_b (a bi-encoder reads both sides with one encoder)
Parameters are laid out as HF's: bert/… for the encoder, classifier/… or qa_outputs/… for the head;
`encoder_weights` carries a pretrained checkpoint's encoder over.
"""
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.errors import InputError
from flaxbert.models import weights
from flaxbert.models.config import BertConfig
from flaxbert.models.dropout import Dropout
from flaxbert.models.encoder import BertModel, EncoderLayer, dense, gather_positions

log = logging.getLogger("flaxbert")

HEADS = ("sequence", "token", "span", "sentences", "embedding")
POOLINGS = ("mean", "cls")


def pool(hidden: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
  """[B, T, H] → [B, H]: the masked mean of the last hidden states, or the [CLS] state."""
  if pooling == "cls":
    return hidden[:, 0]
  m = mask.astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


class BertForTask(nn.Module):
  config: BertConfig
  head: str
  num_outputs: int = 1
  pooling: str = "mean"  # embedding and sentences heads: mean | cls
  inter_sentence_layers: int = 0  # sentences head: Transformer layers over the sentence vectors
  remat_policy: str = "none"  # the encoder's (flaxbert.models.encoder.REMAT_POLICIES)
  scan_layers: bool = False  # flaxbert.models.encoder.Encoder.scan_layers

  @nn.compact
  def __call__(self, batch: dict, deterministic: bool = True) -> dict:
    cfg = self.config
    if self.head not in HEADS:
      raise InputError(f"head: expected one of {HEADS}, got {self.head!r}")
    if self.pooling not in POOLINGS:
      raise InputError(f"pooling: expected one of {POOLINGS}, got {self.pooling!r}")
    if self.inter_sentence_layers < 0:
      raise InputError(f"inter_sentence_layers: expected >= 0, got {self.inter_sentence_layers}")
    bert = BertModel(cfg, add_pooling_layer=self.head == "sequence", remat_policy=self.remat_policy,
                     scan_layers=self.scan_layers, name="bert")
    if self.head == "embedding":
      return self._embed(bert, batch, deterministic)
    # packed rows (flaxbert.training.packing: classification, NER, SQuAD) restart positions at each example
    hidden, pooled = bert(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                          batch.get("position_ids"), deterministic=deterministic,
                          pooled_positions=batch["cls_positions"] if self.head == "sequence" else None)
    if self.head == "span":
      logits = dense(cfg, 2, ("embed", "classes"), "qa_outputs")(hidden).astype(jnp.float32)
      return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
    x = {"sequence": pooled, "token": hidden}.get(self.head)
    if self.head == "sentences":
      x = self._sentences(hidden, batch, deterministic)
    x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
    logits = dense(cfg, self.num_outputs, ("embed", "classes"), "classifier")(x).astype(jnp.float32)
    if self.head == "sentences":
      return {"scores": logits[..., 0]}
    return {"logits": logits}

  def _sentences(self, hidden: jax.Array, batch: dict, deterministic: bool) -> jax.Array:
    """[B, T, H] → [B, S, H]: sentence vectors, in document context when inter-sentence layers exist.

    The layers are the encoder's own kind (its config: heads, feed-forward size, activation,
    dropout, post-LN), as many as `inter_sentence_layers`; BertSumExt uses 2 (with 8 heads and a
    2048-wide feed-forward for BERT-base), masks empty slots and adds sinusoidal positions.
    """
    slots = batch["cls_positions"].shape[1]
    if self.pooling == "cls":
      x = gather_positions(hidden, batch["cls_positions"])
    else:
      member = jax.nn.one_hot(batch["sentence_ids"], slots, dtype=hidden.dtype)  # [B, T, S]; -1 → zeros
      x = jnp.einsum("bts,bth->bsh", member, hidden) / jnp.maximum(jnp.sum(member, axis=1), 1.0)[..., None]
    if self.inter_sentence_layers:
      mask = batch["sentence_mask"]
      x = x * mask[..., None].astype(x.dtype) + sinusoidal_positions(slots, x.shape[-1]).astype(x.dtype)
      attend = jnp.asarray(mask, bool)[:, None, None, :]
      for i in range(self.inter_sentence_layers):
        x = EncoderLayer(self.config, name=f"inter_sentence_{i}")(x, attend, deterministic)
    return x

  def _embed(self, bert: nn.Module, batch: dict, deterministic: bool) -> dict:
    sides = ["", "_b"] if "input_ids_b" in batch else [""]
    ids = jnp.concatenate([batch[f"input_ids{s}"] for s in sides])
    mask = jnp.concatenate([batch[f"input_mask{s}"] for s in sides])
    hidden, _ = bert(ids, jnp.zeros_like(ids), mask, deterministic=deterministic)
    vectors = pool(hidden, mask, self.pooling).astype(jnp.float32)
    parts = jnp.split(vectors, len(sides))
    return {f"embedding{s}": v for s, v in zip(sides, parts)}


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
  """[length, width] Transformer positions: sin on even features, cos on odd (Vaswani et al.)."""
  position = np.arange(length, dtype=np.float64)[:, None]
  rate = np.exp(np.arange(0, width, 2) * -(np.log(10000.0) / width))
  table = np.zeros((length, width), np.float32)
  table[:, 0::2] = np.sin(position * rate)
  table[:, 1::2] = np.cos(position * rate)[:, :width // 2]
  return table


def encoder_weights(fresh_shapes: dict, loaded: dict, source: str) -> dict:
  """The pretrained bert/… tensors the task model uses (flaxbert.models.weights.take: a flat dict
  for `weights.merge` inside the jitted init), after checking every shape.

  Pretraining heads (cls/…) are dropped; a checkpoint without a pooler leaves the task's pooler
  freshly initialised (logged); a missing encoder tensor or a shape mismatch is an error.
  """
  if "bert" not in loaded:
    raise InputError(f"{source}: no bert/… parameters in the checkpoint")
  taken = weights.take(fresh_shapes, loaded, source, source_key=lambda k: k if k.startswith("bert/") else None,
                       optional=lambda k: k.startswith("bert/pooler/"))
  pooler = [k for k in weights.flat(fresh_shapes) if k.startswith("bert/pooler/")]
  if any(k not in taken for k in pooler):
    log.info("%s has no pooler; the task's pooler starts from a fresh initialisation", source)
  dropped = sorted(k for k in loaded if k != "bert")
  if dropped:
    log.info("%s: dropping %s (pretraining heads); task head initialised fresh", source, ", ".join(dropped))
  return taken
