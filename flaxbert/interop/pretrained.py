"""Whole models in and out: detect a source's kind, load it, save it atomically, convert.

Source kinds:
  flaxbert  a directory with flaxbert_config.json + params/          (interop.native)
  workdir   a training workdir: flaxbert_config.json + checkpoints/ (the newest restorable step)
  hf        a directory with config.json + model.safetensors | pytorch_model.bin (interop.hf)
  tf1       bert_config.json + bert_model.ckpt.* (a folder or the prefix) (interop.tf1)
"""
import dataclasses
import logging
import os
from pathlib import Path

import flax.linen as nn
import numpy as np

from flaxbert.atomic import atomic_directory, check_destination
from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.interop import hf, native, tf1
from flaxbert.interop.tensors import (PARAM_DTYPES, check_params, check_weights, export_tensors, import_tensors,
                                      stored_names)
from flaxbert.models.config import BertConfig
from flaxbert.models.pretraining import build_model, describe, param_shapes
from flaxbert.training import checkpoint

log = logging.getLogger("flaxbert")

FORMATS = ("flaxbert", "hf", "tf1")
VOCAB = "vocab.txt"


@dataclasses.dataclass
class Loaded:
  """A model read from disk: its config, plain params tree, layout, kind and vocabulary file."""
  config: BertConfig
  params: dict
  heads: bool
  pooler: bool
  kind: str
  vocab: Path | None
  step: int | None = None  # a training workdir's: the checkpoint step read (the newest that restores)

  @property
  def model(self) -> nn.Module:
    return build_model(self.config, self.heads, self.pooler)


def detect(path: str | os.PathLike) -> str:
  """'flaxbert' | 'hf' | 'tf1' for a source path; a clear error saying what was looked for."""
  path = storage.path(path)
  if not path.exists() and not storage.path(f"{path}.index").is_file():
    raise InputError(f"{path}: no such file or directory")
  if path.is_dir() and native.is_native(path):
    return "workdir" if (path / checkpoint.CHECKPOINTS).is_dir() else "flaxbert"
  if path.is_dir() and hf.is_hf_dir(path):
    return "hf"
  if tf1.checkpoint_prefix(path) is not None:
    return "tf1"
  raise InputError(
      f"{path}: not a BERT checkpoint; expected a flaxbert directory ({native.CONFIG} + params/ or "
      f"{checkpoint.CHECKPOINTS}/), "
      f"an HF directory (config.json + one of {list(hf.WEIGHT_FILES)}) or a TF1 checkpoint "
      f"({tf1.CONFIG} + {tf1.PREFIX}.index/.data-*)")


def load(path: str | os.PathLike) -> Loaded:
  path = storage.path(path)
  kind = detect(path)
  step, stored = None, {}
  if kind == "flaxbert":
    config, params, heads, pooler = native.read(path)
    source = path / native.PARAMS
  elif kind == "workdir":
    config, heads, pooler = native.read_header(path)
    step, params = checkpoint.restore_params(path, param_shapes(build_model(config, heads, pooler)))
    source = f"{path} (checkpoint step {step})"
  else:
    config, tensors = (hf if kind == "hf" else tf1).read(path)
    fmt = "hf" if kind == "hf" else "tf"
    params, heads, pooler = import_tensors(tensors, config, fmt, str(path))
    source = hf.weights_file(path) if kind == "hf" else tf1.checkpoint_prefix(path)
    stored = stored_names(config, heads, pooler, fmt)
  params = check_weights(params, str(source), stored)  # every kind: floating, finite, one dtype
  config = config.replace(param_dtype=_param_dtype(params, config))
  folder = path if path.is_dir() else path.parent
  vocab = folder / VOCAB if (folder / VOCAB).is_file() else None
  if vocab is not None:
    _check_vocab_fits(vocab, config)
  return Loaded(config, params, heads, pooler, kind, vocab, step)


def _check_vocab_fits(vocab: Path, config: BertConfig) -> None:
  """Token ids past the embedding table would read nothing (NaN vectors), so refuse them here."""
  from flaxbert.text.tokenization import read_wordpiece_vocab  # pylint: disable=import-outside-toplevel
  size = len(read_wordpiece_vocab(vocab))
  if size > config.vocab_size:
    raise InputError(f"{vocab}: {size} tokens, but the model's vocab_size is {config.vocab_size}; "
                     "the vocabulary does not belong to these weights")


def _param_dtype(params: dict, config: BertConfig) -> str:
  name = np.asarray(params["bert"]["embeddings"]["word_embeddings"]["embedding"]).dtype.name
  return name if name in PARAM_DTYPES else config.param_dtype


def from_pretrained(path: str | os.PathLike) -> tuple[nn.Module, dict]:
  """(model, params) from any source kind; params are a plain dict of numpy arrays.

  A checkpoint with the MLM/NSP heads gives a `BertForPreTraining`, a headless one (HF's
  BertModel) a `BertEncoder` whose outputs have mlm_logits = nsp_logits = None.
  """
  loaded = load(path)
  return loaded.model, loaded.params


def save_pretrained(directory: str | os.PathLike, model: nn.Module, params: dict,
                    format: str = "flaxbert", vocab: str | os.PathLike | None = None,  # pylint: disable=redefined-builtin
                    overwrite: bool = False) -> Path:
  """Writes `model`/`params` as a flaxbert, HF or TF1 directory, atomically (flaxbert.atomic)."""
  if format not in FORMATS:
    raise InputError(f"format must be one of {FORMATS}, got {format!r}")
  heads, pooler = describe(model)
  params = nn.unbox(params)
  if "params" in params and "bert" not in params:  # model.init's variables, not yet unpacked
    params = params["params"]
  check_params(params, param_shapes(model), "params")
  with atomic_directory(directory, overwrite, [vocab], is_export, EXPORT_KIND, complete=EXPORT_MARKERS) as tmp:
    if format == "flaxbert":
      native.write(tmp, model.config, params, heads, pooler)
    elif format == "hf":
      hf.write(tmp, model.config, export_tensors(params, model.config, "hf", heads, pooler), heads)
    else:
      if not heads:
        raise InputError("the original TF1 format holds BERT with its pretraining heads; this model has none")
      tf1.write(tmp, model.config, export_tensors(params, model.config, "tf", heads, pooler))
    if vocab is not None:
      storage.copy(vocab, tmp / VOCAB)
  return storage.path(directory)


def is_export(directory: Path) -> bool:
  """A model folder (flaxbert, HF or TF1) that overwrite may replace; not a training workdir."""
  try:
    return detect(directory) in ("flaxbert", "hf", "tf1")
  except InputError:
    return False


EXPORT_KIND = "flaxbert, HF or TF1 model folder (a training workdir is never replaced)"
# What `detect` recognises a model folder by: written last where a folder is uploaded (an object store).
EXPORT_MARKERS = (native.CONFIG, "config.json", tf1.CONFIG)


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, overwrite: bool = False) -> Loaded:
  """Reads any source kind and writes it as `to`; the vocabulary travels along when present."""
  check_destination(dst, overwrite, [src], is_export, EXPORT_KIND)  # before the (long) load
  loaded = load(src)
  save_pretrained(dst, loaded.model, loaded.params, format=to, vocab=loaded.vocab, overwrite=overwrite)
  return loaded

