"""Warm-starting BertEncoderDecoder from a BERT checkpoint (Rothe, Narayan & Severyn 2020).

  bert2bert  encoder and decoder (embeddings, self-attention, feed-forward) from BERT; the
             decoder's cross-attention keeps its fresh initialisation
  bert2rnd   encoder from BERT; the whole decoder fresh
  bertshare  a share=True model: the encoder from BERT, which the decoder shares
In bert2bert and bertshare the LM head's transform and bias come from the checkpoint's MLM head
(`cls/predictions`, present in BertForPreTraining checkpoints), else they stay fresh; its
decoder matrix is always the (tied) decoder word embeddings. The pooler and NSP head are unused.
"""
import logging
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.errors import InputError

log = logging.getLogger("flaxbert")

MODES = ("bert2bert", "bert2rnd", "bertshare")


def warm_start(model_params_fresh: dict, bert_params: dict, mode: str) -> dict:
  """`model_params_fresh` (flaxbert.seq2seq.init_params) with BERT's weights copied in per `mode`.

  bert_params: the plain tree `flaxbert.from_pretrained` returns ({"bert": …, ["cls": …]}).
  Every copied tensor must have the model's shape (an InputError names both paths and shapes);
  the result has the fresh tree's structure and dtypes.
  """
  if mode not in MODES:
    raise InputError(f"mode: expected one of {MODES}, got {mode!r}")
  fresh, bert_params = nn.unbox(model_params_fresh), nn.unbox(bert_params)
  if not isinstance(fresh, dict) or not {"encoder", "decoder"} <= set(fresh):
    raise InputError("model_params_fresh: expected BertEncoderDecoder params (encoder/…, "
                     f"decoder/…), got {_keys(fresh)}")
  if not isinstance(bert_params, dict) or "bert" not in bert_params:
    raise InputError("bert_params: expected the params tree flaxbert.from_pretrained returns "
                     f"(with a 'bert' subtree), got {_keys(bert_params)}")
  shared = "embeddings" not in fresh["decoder"].get("bert", {})
  if shared != (mode == "bertshare"):
    raise InputError(f"mode: {mode!r} needs a model built with share={mode == 'bertshare'}, but "
                     f"model_params_fresh come from one with share={shared}")
  bert = bert_params["bert"]
  _check_layers(fresh["encoder"]["encoder"], bert, "encoder/encoder")
  decoder = dict(fresh["decoder"])
  if mode == "bert2bert":  # the decoder's tree is BERT's plus cross-attention
    _check_layers(decoder["bert"]["encoder"], bert, "decoder/bert/encoder")
    decoder["bert"] = _copy(decoder["bert"], bert, "decoder/bert", "bert")
  predictions = bert_params.get("cls", {}).get("predictions")
  if mode != "bert2rnd" and predictions is None:
    log.info("warm_start: the checkpoint has no MLM head (cls/predictions); the decoder's LM "
             "head transform and bias start fresh")
  elif mode != "bert2rnd":
    decoder["cls"] = dict(decoder["cls"], predictions=_copy(
        decoder["cls"]["predictions"], predictions, "decoder/cls/predictions", "cls/predictions"))
  return dict(fresh, encoder=_copy(fresh["encoder"], bert, "encoder", "bert"), decoder=decoder)


def fresh_mask(mode: str | None, has_mlm_head: bool) -> Callable[[Any], Any]:
  """tree → the same tree of bools: True at the parameters `warm_start(…, mode)` leaves fresh.

  bert2rnd: the whole decoder; bert2bert and bertshare: the cross-attention, plus the LM head's
  transform and bias when the checkpoint has no MLM head; None (random init): nothing. It reads
  paths only, so it applies to params, shapes, gradients or updates alike (optax.masked).
  """
  if mode is not None and mode not in MODES:
    raise InputError(f"mode: expected one of {MODES} or None, got {mode!r}")

  def fresh(path) -> bool:
    names = [str(getattr(k, "key", k)) for k in path]
    if mode is None:
      return False
    if mode == "bert2rnd":
      return names[0] == "decoder"
    return "crossattention" in names or (not has_mlm_head and names[:2] == ["decoder", "cls"])
  return lambda tree: jax.tree_util.tree_map_with_path(lambda path, _: fresh(path), tree)


def _keys(tree) -> str:
  return f"keys {sorted(tree)}" if isinstance(tree, dict) else type(tree).__name__


def _check_layers(model_layers: dict, bert: dict, model_path: str) -> None:
  """Both stacks must have the same number of layers."""
  ours, theirs = len(model_layers), len(bert.get("encoder", {}))
  if ours != theirs:
    raise InputError(f"bert_params: bert/encoder has {theirs} layers, expected {ours} "
                     f"(the model's {model_path})")


def _copy(fresh: dict, source, fresh_path: str, source_path: str) -> dict:
  """`fresh` with every leaf replaced by `source`'s at the same path, after checking shapes;
  cross-attention, which BERT does not have, stays as it is."""
  out = {}
  for key, leaf in fresh.items():
    here, there = f"{fresh_path}/{key}", f"{source_path}/{key}"
    if key == "crossattention":
      out[key] = leaf
      continue
    got = source.get(key) if isinstance(source, dict) else None
    if isinstance(leaf, dict):
      out[key] = _copy(leaf, got if isinstance(got, dict) else {}, here, there)
      continue
    want = tuple(leaf.shape)
    if got is None or isinstance(got, dict):
      raise InputError(f"bert_params: missing {there} (expected shape {want}, for {here})")
    if tuple(got.shape) != want:
      hint = ""
      if there.endswith(("word_embeddings/embedding", "predictions/bias")):
        hint = f"; the checkpoint's vocab_size is {got.shape[0]}, the model's {want[0]}"
      raise InputError(f"bert_params: {there} has shape {tuple(got.shape)}, expected {want} "
                       f"(for {here}){hint}")
    out[key] = jnp.asarray(got, leaf.dtype)
  return out
