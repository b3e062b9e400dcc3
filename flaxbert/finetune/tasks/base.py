"""The one task protocol: what the fine-tuning job (flaxbert.finetune.job) asks of every task family.

A task family turns files into examples, examples into training arrays and a model with its
initial weights, says what its loss is (sums over a denominator, so that padded rows and gradient
accumulation stay exact: flaxbert.training.step), and scores a model on evaluation files. The job
runs the same sequence for every family — read, fit, tokenizer, model, state, the one training
loop, evaluation — so `finetune`, `evaluate`, `predict`, `sweep` and `embed` work on any task, and
`generate` and `convert` on the families that have them (seq2seq). The six kinds
(flaxbert.finetune.tasks.registry.FAMILIES) come in two shapes:

  flaxbert.finetune.tasks.encoder.EncoderTask: BERT with a task head (classification, ner, qa,
    similarity, extractive_summarization), its encoder from a checkpoint, evaluation by a
    forward pass
  flaxbert.finetune.tasks.seq2seq.Seq2SeqTask (seq2seq): the BERT2BERT encoder-decoder
    (translation, abstractive summarization), warm-started, evaluation by beam search

A family's `kind` is recorded in the workdir's task.json, and every later command dispatches on
it (flaxbert.finetune.workdir). Learnt state (label sets) travels in `state()`, so evaluation and
prediction read the same label ids the model was trained with.
"""
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.models.config import BertConfig
from flaxbert.text.tokenization import Tokenizer
from flaxbert.training import optim, sharding


@dataclasses.dataclass
class Session:
  """A model on a mesh, with its tokenizer: what training, evaluation and prediction share."""
  mesh: jax.sharding.Mesh
  rules: tuple
  tokenizer: Tokenizer
  model: nn.Module
  params_sharding: Any = None  # set once the parameters are laid out (training or restore)

  @property
  def parallel(self) -> int:
    """Data-parallel devices: a batch is split over the mesh's data and fsdp axes."""
    return sharding.data_parallel(self.mesh)


@dataclasses.dataclass
class TrainingData:
  """The arrays a family trains on, cut into global batches as a pure function of the step."""
  arrays: dict[str, np.ndarray]  # [rows, …] (packed tasks: rows of several examples)
  rows_per_batch: int
  batch: Callable[[int], dict[str, np.ndarray]]  # step → the global batch (host arrays)
  summary: str  # for the log: how the examples became rows

  @property
  def rows(self) -> int:
    return len(next(iter(self.arrays.values())))


class Task:
  """The base of the task families; see the module docstring. Subclasses set `kind`."""
  kind: str = ""

  def __init__(self, config):
    self.config = config

  # --- before anything is written ---------------------------------------------------------------
  def check_config(self) -> None:
    """Raises InputError naming the first setting this family cannot run with."""

  def needs_training(self) -> bool:
    """False where the family can score a checkpoint as it is (extractive summarization without
    train_path: sentences ranked by their embeddings); the job then skips training and scores
    with the family's `score_unsupervised(examples, embedder)` (flaxbert.finetune.embed.Embedder of
    the init checkpoint, with the config's pooling and max_seq_length)."""
    return True

  # --- data ---------------------------------------------------------------------------------------
  def read(self, path: str, training: bool, field: str) -> list:
    """The examples of one train/eval/predict input (`field` names it in errors)."""
    raise NotImplementedError

  def eval_sets(self) -> list[tuple[str, list]]:
    """(name, examples) of each comma-separated eval_path; the first file's scores are unprefixed.
    A file that holds no example is an error here, before any training: its scores would not exist."""
    sets = []
    for path in (self.config.eval_path or "").split(","):
      if path:
        examples = self.read(path, False, "eval_path")
        if not len(examples):
          raise InputError(f"eval_path {path}: holds no examples; expected at least one to evaluate on")
        sets.append((self.eval_name(path), examples))
    return sets

  def eval_name(self, path: str) -> str:
    return Path(path).stem

  def fit(self, train: Sequence, evals: Sequence[tuple[str, Sequence]]) -> None:
    """Learns what the training data defines (label sets) and checks all data against it."""
    self.learn(train)
    self.check([("train", train), *evals])

  def learn(self, train: Sequence) -> None:
    """Learns the label set (tasks whose labels come from the training file)."""

  def check(self, sets: Sequence[tuple[str, Sequence]]) -> None:
    """Raises InputError naming file:line for data the learnt state cannot represent."""

  def state(self) -> dict:
    return {}

  def load_state(self, state: dict) -> None:
    del state

  # --- model ----------------------------------------------------------------------------------------
  def load_init(self):
    """The checkpoint to start from (flaxbert.interop.pretrained.Loaded), or None."""
    raise NotImplementedError

  def tokenizer(self, workdir: Path, loaded, train: Sequence) -> Tokenizer:
    raise NotImplementedError

  def model_config(self, loaded, tokenizer: Tokenizer) -> BertConfig:
    raise NotImplementedError

  def build_model(self, cfg: BertConfig) -> nn.Module:
    raise NotImplementedError

  def record(self) -> dict:
    """What evaluate/predict/generate need to rebuild the model, beyond the task, its kind, its
    state and the model config: {"settings": …, ["defaults": …]} (task.json; after training_data)."""
    raise NotImplementedError

  def restore_settings(self, record: dict) -> None:
    """Takes the recorded settings (lengths, pooling…) over into this task's config."""
    raise NotImplementedError

  def input_shapes(self, session: Session) -> tuple:
    """model.init's positional arguments as jax.ShapeDtypeStruct trees (one example), after
    training_data or restore_settings."""
    raise NotImplementedError

  def initial_weights(self, fresh_shapes: dict, loaded) -> tuple[Any, Callable | None]:
    """(pretrained, merge) for the jitted init (flaxbert.training.state.create_train_state)."""
    raise NotImplementedError

  def encoder_params(self, params: dict) -> dict:
    """The BERT encoder's parameters ({"embeddings", "encoder"[, "pooler"]}) inside this family's
    model (flaxbert embed reads them)."""
    raise NotImplementedError

  # --- training -------------------------------------------------------------------------------------
  def training_data(self, examples: Sequence, session: Session) -> TrainingData:
    raise NotImplementedError

  def optimizer(self, opt_config, loaded):
    """The optax transformation (flaxbert.training.optim.build_optimizer unless the family says
    otherwise)."""
    return optim.build_optimizer(opt_config)

  def loss_sums(self, model: nn.Module, params, batch: dict, rng) -> dict:
    raise NotImplementedError

  def counts(self, batch: dict) -> dict:
    raise NotImplementedError

  def objective(self, sums: dict, counts: dict):
    raise NotImplementedError

  def describe(self) -> str:
    """Extra words for the training log line (e.g. the warm start)."""
    return ""

  # --- evaluation and prediction --------------------------------------------------------------------
  def evaluate(self, session: Session, params, evals: list, out_dir: Path | None, training: bool = False) -> dict:
    """Scores of each prepared eval set (`prepare_evals`), the first unprefixed; with out_dir, the
    first set's predictions are written there. training: evaluation inside a fine-tuning run, where
    a family may choose settings on the first set (`learned_defaults`)."""
    raise NotImplementedError

  def learned_defaults(self) -> dict:
    """What evaluation during training chose that later commands default to (a multi-label
    threshold): task.json's "defaults" (flaxbert.finetune.workdir); restore_settings reads it back."""
    return {}

  def prepare_evals(self, session: Session, eval_sets: list[tuple[str, list]]) -> list:
    """Eval sets made ready for `evaluate` (e.g. featurized once for all evaluations of a run)."""
    return eval_sets

  def predict_file(self, session: Session, params, input_path: str, output: str) -> int:
    """Writes the predictions for `input_path` to `output`; returns how many examples."""
    raise NotImplementedError

  # --- a workdir without its config, and leaving flaxbert ---------------------------------------------
  @classmethod
  def from_record(cls, record: dict) -> "Task":
    """The task as the workdir recorded it, for commands given no config (generate, convert)."""
    raise NotImplementedError

  def export_hf(self, session: Session, params, dst, overwrite: bool, inputs: Sequence) -> str:
    """Writes the fine-tuned model (host params) as a transformers folder at `dst` (atomically);
    returns the transformers class written."""
    raise InputError(f"{self.config.task}: no transformers class to export this task's model to")


def recorded_config(record: dict, **fields):
  """A config for a task rebuilt from its task.json (`from_record`): the task, its recorded settings
  and defaults, `fields`, and a data-parallel mesh over all devices."""
  settings = {k: v for k, v in record["settings"].items() if k != "inputs"}
  c = ml_collections.ConfigDict({"task": record["task"], "lower_case": None, **fields, **settings,
                                 **record.get("defaults", {})})
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1, "sharding_rules": sharding.DATA_PARALLEL})
  return c


def prefixed(n: int, name: str, scores: dict) -> dict:
  """An eval set's scores as the job reports them: the first set's as they are, others' prefixed
  with the set's name."""
  return {(k if n == 0 else f"{name}_{k}"): float(v) for k, v in scores.items()}


def existing(path: str | os.PathLike | None, field: str) -> str:
  if not path:
    raise InputError(f"{field}: required")
  if str(path).startswith("tfds:"):  # flaxbert.finetune.tasks.tfds_source
    return str(path)
  if not storage.path(path).is_file():
    raise InputError(f"{field}: {path}: no such file")
  return str(path)
