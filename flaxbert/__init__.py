"""flaxbert: BERT in JAX/Flax — pretrain, reproduce, fine-tune and ship.

The public API:
  BertConfig                         the model's hyper-parameters (flaxbert.models.config)
  BertForPreTraining, BertEncoder    the models (flaxbert.models.pretraining)
  build_model, init_params           a model from a config, fresh parameters
  from_pretrained(path)              (model, params) from a flaxbert, HF or TF1 checkpoint
  save_pretrained(dir, model, params, format="flaxbert" | "hf" | "tf1")
  load_tokenizer(path) -> Tokenizer  WordPiece vocab.txt or sentencepiece .model (or a folder)

Names load on first use, so `import flaxbert.text.tokenization` (data preparation, its worker
processes) does not import JAX.

The package is layered; each layer imports only the ones before it:
  errors, atomic       the base: InputError, directories and files that appear only when complete
  text/, models/       tokenization and sentence splitting; BERT, its heads, BERT2BERT, generation
  training/            train state, the one train step and loop, checkpoints, sharding, optimizers
  interop/             weights in and out (flaxbert, HF, TF1; BERT2BERT to HF)
  pretrain/, finetune/ the jobs (data_prep/, beside the package, prepares pretraining data)
  cli, demo, launch    the command line, `make demo`, the process launcher (read configs/)
"""
import importlib

_EXPORTS = {
    "BertConfig": "flaxbert.models.config", "InputError": "flaxbert.errors",
    "BertEncoder": "flaxbert.models.pretraining", "BertForPreTraining": "flaxbert.models.pretraining",
    "BertOutput": "flaxbert.models.pretraining", "build_model": "flaxbert.models.pretraining",
    "init_params": "flaxbert.models.pretraining", "BertModel": "flaxbert.models.encoder",
    "from_pretrained": "flaxbert.interop.pretrained", "save_pretrained": "flaxbert.interop.pretrained",
    "Tokenizer": "flaxbert.text.tokenization", "load_tokenizer": "flaxbert.text.tokenization",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.4.0"


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'flaxbert' has no attribute {name!r}")
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value
  return value


def __dir__():
  return __all__
