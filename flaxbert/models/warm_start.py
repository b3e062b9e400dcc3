"""Warm-starting BertEncoderDecoder from a BERT checkpoint (Rothe, Narayan & Severyn 2020).

  bert2bert  encoder and decoder (embeddings, self-attention, feed-forward) from BERT; the
             decoder's cross-attention keeps its fresh initialisation
  bert2rnd   encoder from BERT; the whole decoder fresh
  bertshare  a share=True model: the encoder from BERT, which the decoder shares
In bert2bert and bertshare the LM head's transform and bias come from the checkpoint's MLM head
(`cls/predictions`, present in BertForPreTraining checkpoints), else they stay fresh; its
decoder matrix is always the (tied) decoder word embeddings. The pooler and NSP head are unused.

One rule (`_source_key`: which checkpoint tensor fills a model parameter, or none) drives both the
copy (`warm_start`) and the learning-rate mask of the weights left fresh (`fresh_mask`).
"""
import logging
from typing import Any, Callable

import flax.linen as nn
import jax

from flaxbert.errors import InputError
from flaxbert.models import weights

log = logging.getLogger("flaxbert")

MODES = ("bert2bert", "bert2rnd", "bertshare")


def _source_key(mode: str, has_mlm_head: bool) -> Callable[[str], str | None]:
  """model parameter key → the BERT checkpoint key it is copied from, or None (stays fresh)."""
  def source(k: str) -> str | None:
    side, _, rest = k.partition("/")
    if "crossattention" in k.split("/"):
      return None
    if side == "encoder":
      return f"bert/{rest}"
    if mode == "bert2rnd":
      return None
    if rest.startswith("cls/"):
      return rest if has_mlm_head else None
    return rest if mode == "bert2bert" else None  # decoder/bert/…: its embeddings and layers
  return source


def warm_start(model_params_fresh: dict, bert_params: dict, mode: str) -> dict:
  """`model_params_fresh` (flaxbert.models.encoder_decoder.init_params) with BERT's weights copied in per `mode`.

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
  _check_layers(fresh["encoder"]["encoder"], bert_params["bert"], "encoder/encoder")
  if mode == "bert2bert":
    _check_layers(fresh["decoder"]["bert"]["encoder"], bert_params["bert"], "decoder/bert/encoder")
  has_head = "predictions" in bert_params.get("cls", {})
  if mode != "bert2rnd" and not has_head:
    log.info("warm_start: the checkpoint has no MLM head (cls/predictions); the decoder's LM "
             "head transform and bias start fresh")
  return weights.merge(fresh, weights.take(fresh, bert_params, "bert_params", _source_key(mode, has_head)))


def fresh_mask(mode: str | None, has_mlm_head: bool) -> Callable[[Any], Any]:
  """tree → the same tree of bools: True at the parameters `warm_start(…, mode)` leaves fresh.

  bert2rnd: the whole decoder; bert2bert and bertshare: the cross-attention, plus the LM head's
  transform and bias when the checkpoint has no MLM head; None (random init): nothing. It reads
  paths only, so it applies to params, shapes, gradients or updates alike (optax.masked).
  """
  if mode is not None and mode not in MODES:
    raise InputError(f"mode: expected one of {MODES} or None, got {mode!r}")
  source = _source_key(mode, has_mlm_head) if mode is not None else (lambda k: k)
  return lambda tree: jax.tree_util.tree_map_with_path(lambda path, _: source(weights.key(path)) is None, tree)


def _keys(tree) -> str:
  return f"keys {sorted(tree)}" if isinstance(tree, dict) else type(tree).__name__


def _check_layers(model_layers: dict, bert: dict, model_path: str) -> None:
  """Both stacks must have the same number of layers."""
  ours, theirs = len(model_layers), len(bert.get("encoder", {}))
  if ours != theirs:
    raise InputError(f"bert_params: bert/encoder has {theirs} layers, expected {ours} "
                     f"(the model's {model_path})")
