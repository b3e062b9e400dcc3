"""Params tree ⇄ flat dicts of named tensors in HF or TF1 layout, with strict checking.

Import accepts what real checkpoints hold: HF keys with or without the `bert.` prefix, old
`LayerNorm.gamma/beta` names, the tied decoder copy, TF1 optimizer slots. Tensors of other
heads (classifiers, QA, run_squad.py's `cls/squad/`) are dropped and reported. An MLM-only
checkpoint (transformers' BertForMaskedLM, run_mlm.py) keeps its MLM head and gets the pooler and
NSP head it lacks freshly initialised, with a warning, as transformers' BertForPreTraining would.
Anything else under `bert`/`cls` that this config does not have, a missing tensor or a wrong shape
stops the import with the name.
"""
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.errors import InputError
from flaxbert.interop import names
from flaxbert.models import weights
from flaxbert.models.config import BertConfig
from flaxbert.models.pretraining import build_model, init_params, param_shapes

log = logging.getLogger("flaxbert")

# Present in real checkpoints, carrying nothing the model needs.
_IGNORED = {
    "hf": re.compile(r"^bert\.embeddings\.position_ids$|^cls\.predictions\.decoder\.(weight|bias)$"),
    "tf": re.compile(r"(^|/)(adam_m|adam_v|global_step|good_steps|bad_steps|loss_scale|"
                     r"current_loss_scale)$|/(adam_m|adam_v)$"),
}
# Other models' heads that live under cls/: run_squad.py's output layer.
_OTHER_HEADS = {"hf": re.compile(r"^cls\.squad\."), "tf": re.compile(r"^cls/squad/")}
_SEP = {"hf": ".", "tf": "/"}
# What an MLM-only checkpoint lacks; initialised afresh when absent as a whole.
_POOLER, _NSP = ("bert", "pooler"), ("cls", "seq_relationship")


def export_tensors(params: dict, config: BertConfig, fmt: str, heads: bool, pooler: bool
                   ) -> dict[str, np.ndarray]:
  """params → {name: array} in `fmt` ("hf" or "tf") layout."""
  out = {}
  for e in names.entries(config, heads, pooler):
    out[e.hf if fmt == "hf" else e.tf] = names.to_external(np.asarray(names.get_path(params, e.path)),
                                                           e.kind, fmt)
  return out


def normalize_hf_keys(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF BertModel keys (no prefix) and pre-2020 LayerNorm.gamma/beta → BertForPreTraining names."""
  out = {}
  for key, value in tensors.items():
    if key.startswith(("embeddings.", "encoder.", "pooler.")):
      key = "bert." + key
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    out[key] = value
  return out


def detect_layout(keys, fmt: str) -> tuple[bool, bool]:
  """(heads, pooler) present among the tensor names."""
  sep = _SEP[fmt]
  heads = any(k.startswith(f"cls{sep}") and not _IGNORED[fmt].search(k) and not _OTHER_HEADS[fmt].search(k)
              for k in keys)
  pooler = any(k.startswith(f"bert{sep}pooler{sep}") for k in keys)
  return heads, pooler


def import_tensors(tensors: dict[str, np.ndarray], config: BertConfig, fmt: str, source: str
                   ) -> tuple[dict, bool, bool]:
  """{name: array} in `fmt` layout → (params, heads, pooler); strict about names and shapes."""
  if fmt == "hf":
    tensors = normalize_hf_keys(tensors)
  heads, pooler = detect_layout(tensors, fmt)
  fresh = _absent_groups(tensors, config, fmt, source) if heads else set()
  pooler = pooler or heads
  model = build_model(config, heads, pooler)
  shapes = param_shapes(model)
  init = init_params(model) if fresh else None
  params, expected = {}, set()
  for e in names.entries(config, heads, pooler):
    name = e.hf if fmt == "hf" else e.tf
    expected.add(name)
    if e.path[:2] in fresh:  # in the dtype of the imported tables (entries() lists them first)
      dtype = params["bert"]["embeddings"]["word_embeddings"]["embedding"].dtype
      names.set_path(params, e.path, np.asarray(names.get_path(init, e.path)).astype(dtype))
      continue
    if name not in tensors:
      raise InputError(f"{source}: missing tensor {name!r} (expected shape "
                       f"{names.external_shape(names.get_path(shapes, e.path).shape, e.kind, fmt)})")
    shape = names.get_path(shapes, e.path).shape
    names.set_path(params, e.path, names.from_external(tensors[name], e.kind, fmt, shape, name, source))
  _check_extra(tensors, expected, params, config, fmt, source)
  return params, heads, pooler


def _absent_groups(tensors, config: BertConfig, fmt: str, source: str) -> set:
  """The pooler / NSP head when wholly absent from a checkpoint with an MLM head; logs them."""
  present = {e.path[:2] for e in names.entries(config, True, True) if (e.hf if fmt == "hf" else e.tf) in tensors}
  absent = {g for g in (_POOLER, _NSP) if g not in present}
  if _POOLER in absent and _NSP not in absent:
    raise InputError(f"{source}: has an NSP head (cls…seq_relationship) but no pooler, which the NSP head reads")
  if absent:
    log.warning("%s: has no %s (an MLM-only checkpoint, as transformers' BertForMaskedLM saves); "
                "they start from a fresh initialisation (seed 0)", source,
                " or ".join("/".join(g) for g in sorted(absent)))
  return absent


def _check_extra(tensors, expected, params, config, fmt, source):
  sep = _SEP[fmt]
  dropped = []
  for name in sorted(set(tensors) - expected):
    if _IGNORED[fmt].search(name):
      continue
    if name.startswith((f"bert{sep}", f"cls{sep}")) and not _OTHER_HEADS[fmt].search(name):
      raise InputError(f"{source}: unexpected tensor {name!r} with shape {tuple(np.shape(tensors[name]))}: "
                       f"not part of a BERT with {config.num_hidden_layers} layers, hidden size "
                       f"{config.hidden_size}; does the config match the weights?")
    dropped.append(name)
  if fmt == "hf" and "cls.predictions.decoder.weight" in tensors:
    table = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    if not np.array_equal(np.asarray(tensors["cls.predictions.decoder.weight"]), table):
      raise InputError(f"{source}: cls.predictions.decoder.weight differs from the word embeddings; "
                       "BERT ties them and untied decoders are not supported")
  if dropped:
    log.warning("%s: dropped %d tensor(s) of other heads: %s", source, len(dropped), ", ".join(dropped))


# The dtypes a checkpoint may keep when all its tensors share one (the model's param_dtype).
PARAM_DTYPES = ("float32", "bfloat16", "float16")


def check_weights(params: dict, source: str, stored: dict[str, str] | None = None) -> dict:
  """The check every loaded parameter tree passes (pretrained.load for all source kinds, the
  transformers task folders, fine-tuning workdirs): real floating tensors, all finite, one dtype.

  An integer, bool, complex (or other non-float) tensor is refused naming it and its dtype. A
  checkpoint whose tensors all share one of PARAM_DTYPES keeps it; any other mix (a float16
  kernel among float32 ones, float64, float8) is cast to float32, with one note naming the cast
  tensors. A tensor holding NaN or Inf is refused naming it and `source`. `stored` maps a
  "/"-joined params key to the name the file stores it under (HF/TF1 names), for messages.
  """
  stored = stored or {}
  flat = {k: np.asarray(x) for k, x in weights.flat(params).items()}
  for k, x in flat.items():
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise InputError(f"{source}: tensor {stored.get(k, k)!r} has dtype {x.dtype}; expected floating-point "
                       f"weights ({', '.join(PARAM_DTYPES)}); integer, bool and complex tensors are not weights")
  dtypes = {x.dtype.name for x in flat.values()}
  target = dtypes.pop() if len(dtypes) == 1 and next(iter(dtypes)) in PARAM_DTYPES else "float32"
  cast = sorted(stored.get(k, k) + f" ({x.dtype})" for k, x in flat.items() if x.dtype.name != target)
  if cast:
    log.warning("%s: cast %d tensor(s) to %s (the model holds one floating dtype): %s%s", source, len(cast), target,
                ", ".join(cast[:8]), f" and {len(cast) - 8} more" if len(cast) > 8 else "")

  def checked(path, x):
    k = weights.key(path)
    x = np.asarray(x)
    y = x if x.dtype.name == target else x.astype(target)
    bad = y.size - int(np.count_nonzero(np.isfinite(y)))
    if bad:
      was = "" if y is x else f" after the cast from {x.dtype}"
      raise InputError(f"{source}: tensor {stored.get(k, k)!r} holds {bad} NaN/Inf value(s) of {y.size}{was}; "
                       "finite weights expected (a diverged or corrupted checkpoint?)")
    return y
  return jax.tree_util.tree_map_with_path(checked, params)


def stored_names(config: BertConfig, heads: bool, pooler: bool, fmt: str) -> dict[str, str]:
  """{"/"-joined params key: its HF ("hf") or TF1 ("tf") tensor name}, for check_weights' messages."""
  return {"/".join(e.path): e.hf if fmt == "hf" else e.tf for e in names.entries(config, heads, pooler)}


def check_params(params: dict, shapes: dict, source: str) -> None:
  """The same tree and shapes as the model expects; names the first offending key."""
  weights.take(shapes, params, source, strict=True)
