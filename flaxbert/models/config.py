"""BertConfig: the model's hyper-parameters, the named sizes, and the JSON formats around them.

Three JSON dialects are read and written:
- the original google-research/bert `bert_config.json`;
- HF transformers' `config.json` (model_type "bert");
- flaxbert's own `flaxbert_config.json` (every field, verbatim).

Activation names differ between them. The original TF code's "gelu" is the tanh approximation
(modeling.py: 0.5x(1+tanh(√(2/π)(x+0.044715x³)))), so an original config's "gelu" reads as
`gelu_tanh`; HF's "gelu" is the exact erf form and reads as `gelu`, its "gelu_new" /
"gelu_pytorch_tanh" as `gelu_tanh`.
"""
import dataclasses
import json
import logging
import os
from typing import Any

from flaxbert import atomic, storage
from flaxbert.errors import InputError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "tanh")
DTYPES = ("float32", "bfloat16", "float16")

# Named sizes (Turc et al. 2019 for tiny…medium; Devlin et al. 2018 for base and large):
# (num_hidden_layers, hidden_size). Heads are H/64 (at least 2), intermediate 4H.
SIZES = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}

_FROM_ORIGINAL_ACT = {"gelu": "gelu_tanh", "relu": "relu", "tanh": "tanh", "swish": "silu", "silu": "silu"}
_FROM_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu", "silu": "silu", "swish": "silu", "tanh": "tanh"}
_TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu", "tanh": "tanh"}

# Fields shared by name with the original bert_config.json (and HF's config.json).
_ORIGINAL_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "hidden_act", "hidden_dropout_prob",
                    "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
                    "initializer_range")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of a BERT encoder; validated on construction."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  dtype: str = "float32"  # compute dtype of activations and matmuls
  param_dtype: str = "float32"  # storage dtype of parameters

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"BertConfig.{name} must be a positive integer, got {value!r}")
    if self.hidden_size % self.num_attention_heads:
      raise InputError(
          f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
          f"num_attention_heads ({self.num_attention_heads})")
    if self.hidden_act not in ACTIVATIONS:
      raise InputError(f"BertConfig.hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise InputError(f"BertConfig.{name} must be a number in [0, 1), got {value!r}")
    for name in ("initializer_range", "layer_norm_eps"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise InputError(f"BertConfig.{name} must be a positive number, got {value!r}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise InputError(f"BertConfig.{name} must be one of {DTYPES}, got {getattr(self, name)!r}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  def replace(self, **changes) -> "BertConfig":
    return dataclasses.replace(self, **changes)

  # --- named sizes -------------------------------------------------------------------------

  @classmethod
  def from_size(cls, size: str, **overrides) -> "BertConfig":
    """tiny | mini | small | medium | base | large, with any field overridden."""
    if size not in SIZES:
      raise InputError(f"unknown BERT size {size!r}; expected one of {sorted(SIZES)}")
    layers, hidden = SIZES[size]
    fields = dict(num_hidden_layers=layers, hidden_size=hidden,
                  num_attention_heads=max(2, hidden // 64), intermediate_size=4 * hidden)
    fields.update(overrides)
    return cls(**fields)

  # --- flaxbert's own JSON -----------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: dict[str, Any], source: str = "config") -> "BertConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise InputError(f"{source}: unknown BertConfig field(s) {unknown}; expected a subset of {sorted(known)}")
    try:
      return cls(**data)
    except InputError as e:
      raise InputError(f"{source}: {e}") from None

  # --- the original google-research/bert bert_config.json ----------------------------------

  def to_original_dict(self) -> dict[str, Any]:
    if self.hidden_act == "gelu":
      logging.getLogger("flaxbert").warning(
          "the original bert_config.json cannot express exact (erf) GELU: its 'gelu' means the tanh "
          "approximation, which the original code will compute (activations differ by up to ~1e-3)")
    if self.layer_norm_eps != 1e-12:
      logging.getLogger("flaxbert").warning(
          "the original bert_config.json has no layer_norm_eps (the original code uses 1e-12); "
          "this model's %g is not recorded", self.layer_norm_eps)
    out = {k: getattr(self, k) for k in _ORIGINAL_FIELDS}
    out["hidden_act"] = {"gelu_tanh": "gelu", "silu": "swish"}.get(self.hidden_act, self.hidden_act)
    return out

  @classmethod
  def from_original_dict(cls, data: dict[str, Any], source: str = "bert_config.json") -> "BertConfig":
    fields = _pick(data, _ORIGINAL_FIELDS, source)
    fields["hidden_act"] = _map_act(fields["hidden_act"], _FROM_ORIGINAL_ACT, source)
    return cls.from_dict(fields, source)

  # --- HF transformers config.json ----------------------------------------------------------

  def to_hf_dict(self) -> dict[str, Any]:
    out = {k: getattr(self, k) for k in _ORIGINAL_FIELDS}
    out.update(
        architectures=["BertForPreTraining"], model_type="bert", hidden_act=_TO_HF_ACT[self.hidden_act],
        layer_norm_eps=self.layer_norm_eps, pad_token_id=0, position_embedding_type="absolute",
        torch_dtype=self.param_dtype, use_cache=True)
    return out

  @classmethod
  def from_hf_dict(cls, data: dict[str, Any], source: str = "config.json") -> "BertConfig":
    model_type = data.get("model_type")  # optional in HF's format; absent means "infer"
    if model_type != "bert":
      raise InputError(f"{source}: model_type is {model_type!r}; only 'bert' models can be imported")
    position_type = data.get("position_embedding_type", "absolute")
    if position_type != "absolute":
      raise InputError(f"{source}: position_embedding_type {position_type!r} is not supported; expected 'absolute'")
    fields = _pick(data, _ORIGINAL_FIELDS, source)
    fields["hidden_act"] = _map_act(fields["hidden_act"], _FROM_HF_ACT, source)
    fields["layer_norm_eps"] = data.get("layer_norm_eps", 1e-12)  # HF's own default
    return cls.from_dict(fields, source)


def _pick(data: dict[str, Any], names: tuple[str, ...], source: str) -> dict[str, Any]:
  if not isinstance(data, dict):
    raise InputError(f"{source}: expected a JSON object, got {type(data).__name__}")
  missing = [k for k in names if k not in data]
  if missing:
    raise InputError(f"{source}: missing field(s) {missing}; is this a BERT config?")
  return {k: data[k] for k in names}


def _map_act(name: Any, table: dict[str, str], source: str) -> str:
  if name not in table:
    raise InputError(f"{source}: hidden_act {name!r} is not supported; expected one of {sorted(table)}")
  return table[name]


def read_json(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a JSON object, with errors that name the file and line."""
  try:
    with storage.path(path).open("r", encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise InputError(f"{path}: file not found") from None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
  return data


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
  """Written atomically (flaxbert.atomic): a kill mid-write leaves the old file or none, never a part."""
  atomic.write_json(path, data, sort_keys=True)
