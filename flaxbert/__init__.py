"""flaxbert: BERT in JAX/Flax — pretrain, reproduce, fine-tune and ship.

The public API:
  BertConfig                         the model's hyper-parameters (flaxbert.config)
  BertForPreTraining, BertEncoder    the models (flaxbert.heads)
  build_model, init_params           a model from a config, fresh parameters
  from_pretrained(path)              (model, params) from a flaxbert, HF or TF1 checkpoint
  save_pretrained(dir, model, params, format="flaxbert" | "hf" | "tf1")
  load_tokenizer(path) -> Tokenizer  WordPiece vocab.txt or sentencepiece .model (or a folder)

Names load on first use, so `import flaxbert.tokenization` (data preparation, its worker
processes) does not import JAX.
"""
import importlib

_EXPORTS = {
    "BertConfig": "flaxbert.config", "InputError": "flaxbert.errors",
    "BertEncoder": "flaxbert.heads", "BertForPreTraining": "flaxbert.heads", "BertOutput": "flaxbert.heads",
    "build_model": "flaxbert.heads", "init_params": "flaxbert.heads", "BertModel": "flaxbert.model",
    "from_pretrained": "flaxbert.pretrained", "save_pretrained": "flaxbert.pretrained",
    "Tokenizer": "flaxbert.tokenization", "load_tokenizer": "flaxbert.tokenization",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'flaxbert' has no attribute {name!r}")
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value
  return value


def __dir__():
  return __all__
