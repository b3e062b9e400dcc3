"""The one name map between flaxbert's parameter tree, HF transformers and original TF1 BERT.

Every tensor is one `Entry`: its flaxbert path, its HF state-dict key (BertForPreTraining
layout, `bert.` prefix), its TF1 variable name, and a `kind` that says how the array is laid out
in each format. All conversions are transposes and reshapes, so they are exact.

  kind     flaxbert            HF                     TF1
  table    [rows, H]           same                   same
  vector   [N, D] or [n]       [N·D] / [n]            same as HF
  kernel   [in, out]           [out, in]              [in, out]
  kernel2  [N, D, H]           [H, N·D]               [N·D, H]
  nsp      [H, 2]              [2, H]                 [2, H]   (cls/seq_relationship/output_weights)
"""
import dataclasses
import math

import numpy as np

from flaxbert.errors import InputError
from flaxbert.models.config import BertConfig


@dataclasses.dataclass(frozen=True)
class Entry:
  path: tuple[str, ...]
  hf: str
  tf: str
  kind: str


def entries(config: BertConfig, heads: bool, pooler: bool) -> list[Entry]:
  """All tensors of a BERT with (or without) the pretraining heads and pooler, in a fixed order."""
  out = []

  def add(path, hf, tf, kind):
    out.append(Entry(tuple(path.split("/")), hf, tf, kind))

  def layer_norm(path, hf, tf):
    add(f"{path}/scale", f"{hf}.weight", f"{tf}/gamma", "vector")
    add(f"{path}/bias", f"{hf}.bias", f"{tf}/beta", "vector")

  def linear(path, hf, tf, kind="kernel"):
    add(f"{path}/kernel", f"{hf}.weight", f"{tf}/kernel", kind)
    add(f"{path}/bias", f"{hf}.bias", f"{tf}/bias", "vector")

  for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    add(f"bert/embeddings/{table}/embedding", f"bert.embeddings.{table}.weight",
        f"bert/embeddings/{table}", "table")
  layer_norm("bert/embeddings/LayerNorm", "bert.embeddings.LayerNorm", "bert/embeddings/LayerNorm")
  for i in range(config.num_hidden_layers):
    p, h, t = f"bert/encoder/layer_{i}", f"bert.encoder.layer.{i}", f"bert/encoder/layer_{i}"
    for name in ("query", "key", "value"):
      linear(f"{p}/attention/{name}", f"{h}.attention.self.{name}", f"{t}/attention/self/{name}")
    linear(f"{p}/attention/output", f"{h}.attention.output.dense", f"{t}/attention/output/dense", "kernel2")
    layer_norm(f"{p}/attention/LayerNorm", f"{h}.attention.output.LayerNorm", f"{t}/attention/output/LayerNorm")
    linear(f"{p}/intermediate", f"{h}.intermediate.dense", f"{t}/intermediate/dense")
    linear(f"{p}/output", f"{h}.output.dense", f"{t}/output/dense")
    layer_norm(f"{p}/LayerNorm", f"{h}.output.LayerNorm", f"{t}/output/LayerNorm")
  if pooler:
    linear("bert/pooler/dense", "bert.pooler.dense", "bert/pooler/dense")
  if heads:
    linear("cls/predictions/transform/dense", "cls.predictions.transform.dense",
           "cls/predictions/transform/dense")
    layer_norm("cls/predictions/transform/LayerNorm", "cls.predictions.transform.LayerNorm",
               "cls/predictions/transform/LayerNorm")
    add("cls/predictions/bias", "cls.predictions.bias", "cls/predictions/output_bias", "vector")
    add("cls/seq_relationship/kernel", "cls.seq_relationship.weight",
        "cls/seq_relationship/output_weights", "nsp")
    add("cls/seq_relationship/bias", "cls.seq_relationship.bias", "cls/seq_relationship/output_bias",
        "vector")
  return out


def encoder_decoder_entries(encoder: BertConfig, decoder: BertConfig, share: bool = False) -> list[Entry]:
  """flaxbert.models.encoder_decoder.BertEncoderDecoder ⇄ HF EncoderDecoderModel (a BertModel encoder, a
  BertLMHeadModel decoder with cross-attention); no TF1 names (tf is ""). With `share` (HF's
  tie_encoder_decoder) the decoder's embeddings and layer entries point at the encoder's paths."""
  out = [Entry(("encoder",) + e.path[1:], "encoder." + e.hf.removeprefix("bert."), "", e.kind)
         for e in entries(encoder, heads=False, pooler=False)]
  for e in entries(decoder, heads=True, pooler=False):
    if "seq_relationship" in e.path:
      continue
    shared = share and e.path[0] == "bert"
    out.append(Entry(("encoder",) + e.path[1:] if shared else ("decoder",) + e.path,
                     "decoder." + e.hf, "", e.kind))
    if e.path[3:4] == ("attention",):  # bert/encoder/layer_i/attention/… → …/crossattention/…
      out.append(Entry(("decoder",) + e.path[:3] + ("crossattention",) + e.path[4:],
                       "decoder." + e.hf.replace(".attention.", ".crossattention."), "", e.kind))
  return out


def _contract(kind: str) -> int:
  return 2 if kind == "kernel2" else 1


def _transposed(kind: str, fmt: str) -> bool:
  return kind == "nsp" or (fmt == "hf" and kind in ("kernel", "kernel2"))


def external_shape(shape: tuple[int, ...], kind: str, fmt: str) -> tuple[int, ...]:
  """The shape the tensor has in format `fmt` ("hf" or "tf") given its flaxbert shape."""
  if kind == "table":
    return tuple(shape)
  if kind == "vector":
    return (math.prod(shape),)
  c = _contract(kind)
  rows, cols = math.prod(shape[:c]), math.prod(shape[c:])
  return (cols, rows) if _transposed(kind, fmt) else (rows, cols)


def to_external(x: np.ndarray, kind: str, fmt: str) -> np.ndarray:
  """flaxbert layout → HF ("hf") or TF1 ("tf") layout."""
  x = np.asarray(x)
  if kind in ("table", "vector"):
    return x.reshape(external_shape(x.shape, kind, fmt))
  c = _contract(kind)
  m = x.reshape(math.prod(x.shape[:c]), -1)
  return np.ascontiguousarray(m.T if _transposed(kind, fmt) else m)


def from_external(y: np.ndarray, kind: str, fmt: str, shape: tuple[int, ...], name: str,
                  source: str) -> np.ndarray:
  """HF/TF1 layout → flaxbert layout of `shape`; a clear error when the shape is not the expected one."""
  y = np.asarray(y)
  expected = external_shape(shape, kind, fmt)
  if tuple(y.shape) != expected:
    raise InputError(f"{source}: tensor {name!r} has shape {tuple(y.shape)}, expected {expected} "
                     "for this config")
  if kind not in ("table", "vector") and _transposed(kind, fmt):
    y = y.T
  return np.ascontiguousarray(y.reshape(shape))


def get_path(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
