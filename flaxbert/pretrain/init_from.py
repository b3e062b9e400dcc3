"""Where a fresh pretraining workdir starts: `init_from`, another run's workdir or a released model.

`locate` tells the two apart from the files alone (nothing is read), before the job writes anything:
  workdir  another pretraining run's workdir (WORKDIR/checkpoints/): its newest restorable step,
           parameters only (`init_mode=params`) or its full state (`full_state`: step, optimizer,
           schedule), as phase 2 of the original recipe continues phase 1;
  model    a flaxbert export, an HF BERT folder (BertForPreTraining, BertForMaskedLM or BertModel)
           or a TF1 checkpoint (flaxbert.interop.pretrained): continued pretraining from its weights
           with the checkpoint's architecture, a fresh optimizer and step 0. Pretraining heads and
           pooler the checkpoint lacks start from their fresh initialisation (one warning names them).
The dataset's vocabulary must be the checkpoint's, token for token; the source is only read.
Once the workdir holds checkpoints of its own a rerun resumes from them: init_from is not read
again (the architecture then comes from the workdir's own flaxbert_config.json).
"""
import dataclasses
import json
import logging
from pathlib import Path

import ml_collections

from flaxbert import storage
from flaxbert.atomic import within
from flaxbert.errors import InputError
from flaxbert.interop import native, pretrained
from flaxbert.models import weights
from flaxbert.models.config import BertConfig
from flaxbert.text.tokenization import CONFIG_FILE, HF_TOKENIZER_FILE, load_tokenizer
from flaxbert.training import checkpoint

log = logging.getLogger("flaxbert")

MODES = ("params", "full_state")
# Parameter groups of BertForPreTraining a released checkpoint may lack, as the warning names them.
GROUPS = {"bert/pooler": "pooler", "cls/predictions": "MLM head", "cls/seq_relationship": "NSP head"}


@dataclasses.dataclass
class Source:
  """init_from, located: kind "workdir" or "model"; a model's weights once read."""
  path: Path
  kind: str
  resuming: bool  # the workdir has checkpoints of its own: the source is not read again
  loaded: pretrained.Loaded | None = None  # model, fresh workdir: the weights read


def has_checkpoints(workdir: Path) -> bool:
  """Whether `workdir` holds checkpoint steps (the training loop then resumes, never starts afresh)."""
  if not (workdir / checkpoint.CHECKPOINTS).is_dir():
    return False
  mngr = checkpoint.manager(workdir, asynchronous=False)
  try:
    return bool(mngr.all_steps())
  finally:
    mngr.close()


def locate(init_from: str | None, init_mode: str, workdir: Path) -> Source | None:
  """init_from's kind from its files (nothing is read yet); refuses what cannot work before the
  job writes anything."""
  if not init_from:
    return None
  if init_mode not in MODES:
    raise InputError(f"init_mode: expected 'params' or 'full_state', got {init_mode!r}")
  path = storage.path(init_from)
  resuming = has_checkpoints(workdir)
  if (path / checkpoint.CHECKPOINTS).is_dir():
    return Source(path, "workdir", resuming)
  if resuming and native.is_native(workdir):
    return Source(path, "model", resuming)  # the run's own checkpoints and record suffice
  if not path.exists() and not storage.path(f"{path}.index").is_file():
    raise InputError(f"init_from {path}: no such file or directory (no restorable checkpoint under "
                     f"{path / checkpoint.CHECKPOINTS}, no model folder or TF1 checkpoint there)")
  pretrained.detect(path)  # a clear error naming what a model folder holds
  if init_mode == "full_state":
    raise InputError(f"init_from {path}: init_mode=full_state continues another pretraining run's "
                     "optimizer and step, which only a pretraining workdir holds; a model folder gives "
                     "weights only: use init_mode=params")
  folder = path if path.is_dir() else path.parent
  if within(workdir, folder):
    raise InputError(f"--workdir {workdir} is inside init_from's folder {folder}; the source is never "
                     "written to: use a workdir elsewhere")
  return Source(path, "model", resuming)


def open_model(source: Source, workdir: Path, dataset_dir: str) -> BertConfig:
  """The checkpoint's architecture: read from the source for a fresh workdir (its weights kept in
  source.loaded, the vocabulary checked against the dataset's), from the workdir's own record when
  it resumes."""
  if source.resuming:
    log.info("%s resumes from its own checkpoints; init_from %s is not read again", workdir, source.path)
    return native.read_header(workdir)[0]
  loaded = pretrained.load(source.path)
  check_vocabulary(loaded, source.path, dataset_dir)
  source.loaded = loaded
  return loaded.config


def check_vocabulary(loaded: pretrained.Loaded, path: Path, dataset_dir: str) -> None:
  """The dataset's tokens are the checkpoint's vocab.txt, in the same order; else an InputError."""
  tok = load_tokenizer(dataset_dir)
  folder = path if path.is_dir() else path.parent
  # vocab.txt, or the tokenizer.json that transformers 5 saves instead
  vocab_file = loaded.vocab
  if vocab_file is None and (folder / HF_TOKENIZER_FILE).is_file():
    vocab_file = folder / HF_TOKENIZER_FILE
  if vocab_file is None:
    raise InputError(f"init_from {path}: no {pretrained.VOCAB} (or tokenizer.json) beside the checkpoint, so the "
                     f"dataset's vocabulary cannot be checked against it; put the checkpoint's {pretrained.VOCAB} "
                     f"in {folder} (and prepare the dataset with it)")
  if tok.kind != "wordpiece":
    raise InputError(f"dataset_dir {dataset_dir} is tokenized with a {tok.kind} model ({tok.source}), but "
                     f"init_from {path} has a WordPiece vocabulary ({vocab_file}); prepare the dataset "
                     f"with that vocabulary")
  compare_vocabularies(tok.vocab, tok.source, load_tokenizer(vocab_file).vocab, str(vocab_file))
  lower = _lower_case(folder / CONFIG_FILE)
  if lower is not None and lower != tok.lower_case:
    log.warning("%s says lower_case=%s but the dataset %s was prepared with lower_case=%s; the model will "
                "see text cased differently from its pretraining", folder / CONFIG_FILE, lower, dataset_dir,
                tok.lower_case)


def compare_vocabularies(data: list, data_file: str, model: list, model_file: str) -> None:
  if data == model:
    return
  where = f"the dataset's vocabulary ({data_file}) is not the checkpoint's ({model_file})"
  fix = f"; prepare the dataset with --vocab {model_file}"
  for i, (a, b) in enumerate(zip(data, model)):
    if a != b:
      raise InputError(f"{where}: token {i} is {a!r} in the dataset's, {b!r} in the checkpoint's{fix}")
  raise InputError(f"{where}: {len(data)} tokens against {len(model)} (the first "
                   f"{min(len(data), len(model))} agree){fix}")


def _lower_case(path: Path) -> bool | None:
  """A tokenizer config's lower_case (flaxbert's) or do_lower_case (HF's), when it states one."""
  try:
    fields = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return None
  value = fields.get("lower_case", fields.get("do_lower_case")) if isinstance(fields, dict) else None
  return value if isinstance(value, bool) else None


def check_architecture(cfg: BertConfig, source: Source, model: ml_collections.ConfigDict, seq_len: int) -> None:
  """The dataset fits the checkpoint; logs the model.* fields the checkpoint's architecture overrides."""
  if seq_len > cfg.max_position_embeddings:
    raise InputError(f"the dataset's max_seq_length {seq_len} exceeds init_from {source.path}'s "
                     f"max_position_embeddings {cfg.max_position_embeddings}; prepare the dataset with "
                     f"--max_seq_length {cfg.max_position_embeddings} or less")
  if cfg.type_vocab_size < 2:
    raise InputError(f"init_from {source.path}: type_vocab_size {cfg.type_vocab_size}; pretraining's "
                     "sentence pairs need segment ids 0 and 1")
  shape = lambda c: (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size)
  ignored = [f"model.size={model.size}"] if shape(BertConfig.from_size(model.size)) != shape(cfg) else []
  ignored += [f"model.{k}={model[k]}" for k in ("hidden_act", "max_position_embeddings") if model[k] != getattr(cfg, k)]
  if ignored:
    log.info("the model is init_from's (%d layers, hidden %d, %d heads, intermediate %d, %s, %d positions, "
             "vocab %d); ignored: %s", *shape(cfg), cfg.hidden_act, cfg.max_position_embeddings, cfg.vocab_size,
             ", ".join(ignored))


def initial_weights(fresh_shapes: dict, loaded: pretrained.Loaded, source: str) -> dict:
  """The checkpoint's tensors for BertForPreTraining's leaves (flaxbert.models.weights.take: a flat
  dict for `weights.merge` in the jitted init); groups it lacks keep their fresh values, named in
  one warning."""
  have = weights.flat(loaded.params)
  missing = [g for g in GROUPS if not any(k.startswith(g + "/") for k in have)]
  taken = weights.take(fresh_shapes, loaded.params, source,
                       source_key=lambda k: None if any(k.startswith(g + "/") for g in missing) else k,
                       strict=True)
  if missing:
    log.warning("%s: has no %s; they start from a fresh initialisation", source,
                ", ".join(f"{g} ({GROUPS[g]})" for g in missing))
  return taken
