"""The encoder families' share of the task protocol: BERT with a task head (flaxbert.models.task_heads).

Classification, NER, QA, similarity and extractive summarization subclass `EncoderTask` and
provide their data side — `read_examples`, `featurize` (examples → fixed-shape feature arrays; one
example may give several features, e.g. SQuAD windows), `head_loss` (the head's outputs → loss
sums over a denominator), `predict` / `score` / `write_predictions` — and `head`, the kind of
output layer. What they share lives here: the encoder comes from any checkpoint flaxbert reads
(pretraining heads dropped, the task head fresh), the tokenizer is the checkpoint's, packed
families put several examples in a row (flaxbert.training.packing) with outputs put back per
example, and evaluation runs the model forward over every feature once (the last batch padded).
"""
import json
import logging
import math
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from flaxbert.atomic import atomic_directory, atomic_file
from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.finetune.tasks.base import Session, Task, TrainingData, existing, prefixed, recorded_config
from flaxbert.finetune.tasks.layout import Features, rows, slot_weights
from flaxbert.interop import task_models
from flaxbert.interop.pretrained import EXPORT_KIND, EXPORT_MARKERS, is_export, load
from flaxbert.models import weights
from flaxbert.models.encoder import check_remat_policy
from flaxbert.models.task_heads import BertForTask, encoder_weights
from flaxbert.text.tokenization import load_tokenizer
from flaxbert.training import batching, packing, sharding

log = logging.getLogger("flaxbert")
MIN_SEQ_LENGTH = 8


class EncoderTask(Task):
  """Subclasses set `kind` and `head` and implement the data side (see the module docstring)."""
  head: str = ""
  prediction_file: str = "predictions.jsonl"
  packed = False  # True: featurize's per-example rows are packed for the model (flaxbert.training.packing)
  token_arrays: dict = {}  # packed tasks: feature arrays aligned with the wordpieces → their padding value
  token_outputs: dict = {}  # packed tasks: head outputs aligned with the wordpieces ([B, T, …]) → the
  #   value they take past an example's end once unpacked

  def __init__(self, config):
    super().__init__(config)
    self._packed: dict = {}
    self._predict: dict = {}

  # --- the data side, per family ---------------------------------------------------------------------
  def read_examples(self, path: str, training: bool) -> list:
    raise NotImplementedError

  def featurize(self, examples: Sequence, tokenizer, training: bool) -> Features:
    raise NotImplementedError

  @property
  def num_outputs(self) -> int:
    return 1

  def head_settings(self) -> dict:
    """BertForTask's settings beyond the head (pooling, inter-sentence layers) from the config."""
    return {}

  def head_loss(self, outputs: dict, batch: dict) -> dict:
    """{"task_loss_sum": …, "task_count": …} over the batch, padded rows (example_mask 0) excluded."""
    raise NotImplementedError

  def predict(self, examples: Sequence, features: Features, outputs: dict[str, np.ndarray]) -> list:
    raise NotImplementedError

  def score(self, examples: Sequence, features: Features, outputs: dict[str, np.ndarray], predictions) -> dict:
    """Metrics of one labelled file; `predictions` is `predict`'s result for the same outputs."""
    raise NotImplementedError

  def calibrate(self, examples: Sequence, features: Features, outputs: dict[str, np.ndarray]) -> None:
    """During training, before the first dev file is predicted and scored: what the family chooses on
    dev data (a multi-label threshold)."""

  def records(self, examples: Sequence, features: Features, outputs: dict[str, np.ndarray], predictions) -> list:
    """`flaxbert predict`'s JSON objects, one per example in input order: its id and what `predict`
    gave (a dict's fields, else under "prediction")."""
    del features, outputs
    return [{"id": e.guid, **p} if isinstance(p, dict) else {"id": e.guid, "prediction": p}
            for e, p in zip(examples, predictions)]

  def write_predictions(self, path: Path, examples: Sequence, predictions: list) -> None:
    """The evaluation's predictions file: one JSON object per example, written atomically."""
    write_jsonl(path, self.records(examples, None, None, predictions))

  # --- the protocol ----------------------------------------------------------------------------------
  def check_config(self) -> None:
    c = self.config
    if c.max_seq_length < MIN_SEQ_LENGTH:
      raise InputError(f"max_seq_length: {c.max_seq_length} leaves next to no room for text beside "
                       f"[CLS]/[SEP]; expected at least {MIN_SEQ_LENGTH} (BERT's recipes use 128–512)")
    check_remat_policy(c.model.remat_policy, "model.remat_policy")
    if self.packed and not (isinstance(c.max_examples_per_row, int) and c.max_examples_per_row >= 1):
      raise InputError(f"max_examples_per_row: expected an integer >= 1, got {c.max_examples_per_row!r}")

  def read(self, path: str, training: bool, field: str) -> list:
    return self.read_examples(existing(path, field), training)

  def load_init(self):
    if not self.config.init:
      raise InputError("init: required (a pretrained checkpoint: flaxbert dir/workdir, HF dir or TF1 checkpoint)")
    return load(self.config.init)

  def tokenizer(self, workdir: Path, loaded, train: Sequence):
    """The checkpoint's vocabulary (training), or the one the workdir saved (evaluation, prediction)."""
    source = workdir if loaded is None else (loaded.vocab or self.config.init)
    return load_tokenizer(source, lower_case=self.config.lower_case)

  def model_config(self, loaded, tokenizer):
    m = self.config.model
    cfg = loaded.config.replace(hidden_dropout_prob=m.hidden_dropout_prob,
                                attention_probs_dropout_prob=m.attention_probs_dropout_prob,
                                dtype=m.dtype, param_dtype="float32")
    self.check_length(cfg)
    return cfg

  def check_length(self, cfg) -> None:
    if self.config.max_seq_length > cfg.max_position_embeddings:
      raise InputError(f"max_seq_length: {self.config.max_seq_length} exceeds the model's "
                       f"max_position_embeddings {cfg.max_position_embeddings}")

  def build_model(self, cfg) -> BertForTask:
    m = self.config.model
    return BertForTask(cfg, self.head, self.num_outputs, remat_policy=m.remat_policy, scan_layers=m.scan_layers,
                       **self.head_settings())

  def record(self) -> dict:
    inputs = {k: [list(v.shape[1:]), v.dtype.name] for k, v in sorted(self._layout.items())}
    return {"settings": {"inputs": inputs, "max_seq_length": self.config.max_seq_length, **self.head_settings()}}

  def restore_settings(self, record: dict) -> None:
    settings = dict(record["settings"])
    self._layout = {k: np.ones((1, *shape), dtype) for k, (shape, dtype) in settings.pop("inputs").items()}
    self.config = self.config.copy_and_resolve_references()
    for k, v in settings.items():
      if k in self.config:
        self.config[k] = v

  def use_default_layout(self) -> None:
    """The per-example layout the model reads, for a model that comes without a task.json (a
    transformers folder): the token arrays at max_seq_length (labels are not model inputs)."""
    length = self.config.max_seq_length
    self._layout = {k: np.ones((1, length), np.int32) for k in ("input_ids", "segment_ids", "input_mask",
                                                                *self.token_arrays)}

  def input_shapes(self, session: Session) -> tuple:
    # one example in the recorded per-example layout, as the model reads it (packed or not)
    arrays, _ = self.rows(Features(self._layout), session.parallel, session.parallel)
    return ({k: jax.ShapeDtypeStruct((1, *v.shape[1:]), v.dtype) for k, v in arrays.items()},)

  def initial_weights(self, fresh_shapes: dict, loaded):
    return encoder_weights(fresh_shapes, loaded.params, str(self.config.init)), weights.merge

  @staticmethod
  def encoder_params(params: dict) -> dict:
    return params["bert"]

  def training_data(self, examples: Sequence, session: Session) -> TrainingData:
    c = self.config
    features = self.featurize(examples, session.tokenizer, training=True)
    if not len(features):
      raise InputError(f"train_path: {c.train_path}: none of its {len(examples)} example(s) gives a training "
                       "feature (see the warnings above); nothing to train on")
    self._layout = {k: v[:1] for k, v in features.arrays.items()}  # the per-example layout task.json records
    multiple = math.lcm(session.parallel, c.optim.grad_accum_steps)
    arrays, per_batch = self.rows(features, c.batch_size, multiple)
    n = len(arrays["input_ids"])
    summary = f"{len(examples)} train examples → {len(features)} features"
    if self.packed:
      summary += f", packed into {n} rows ({len(features) / n:.2f} a row), {per_batch} rows a batch"
    return TrainingData(arrays, per_batch, lambda step: batching.train_batch(arrays, step, per_batch, c.seed), summary)

  def loss_sums(self, model, params, batch: dict, rng) -> dict:
    return self.head_loss(model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": rng}), batch)

  def counts(self, batch: dict) -> dict:
    """{"task_count": …}: the denominator of the whole batch, from the batch alone (the real
    examples: of packed rows' slots, or of the rows)."""
    return {"task_count": jnp.sum(slot_weights(batch) if self.packed else rows(batch))}

  def objective(self, sums: dict, counts: dict):
    return sums["task_loss_sum"] / jnp.maximum(counts["task_count"], 1.0)

  # --- a workdir without its config, and leaving flaxbert ---------------------------------------------
  @classmethod
  def from_record(cls, record: dict) -> "EncoderTask":
    """The task as the workdir recorded it (convert): its settings and state, no training fields."""
    model = ml_collections.ConfigDict({"remat_policy": "none", "scan_layers": False})
    return cls(recorded_config(record, eval_batch_size=jax.device_count(), max_examples_per_row=1, seed=0, model=model,
                               regression=False, multi_label=False, label_column="label"))

  def hf_labels(self) -> tuple[list[str], str | None, float | None]:
    """(labels by class id, problem_type, multi-label threshold) for transformers' config.json."""
    return [], None, None

  def load_hf_labels(self, labels: list[str], problem_type: str | None, threshold: float | None, source: str) -> None:
    """Takes a transformers folder's labels over (hf_labels' inverse); `source` names its config.json."""
    del labels, problem_type, threshold, source

  def export_hf(self, session: Session, params, dst, overwrite: bool, inputs) -> str:
    labels, problem_type, threshold = self.hf_labels()
    with atomic_directory(dst, overwrite, inputs, is_export, EXPORT_KIND, complete=EXPORT_MARKERS) as tmp:
      task_models.write(tmp, session.model.config, params, self.head, labels, problem_type, threshold,
                        session.tokenizer)
    return task_models.CLASSES.get(self.head, "BertModel")

  # --- packing, outputs -------------------------------------------------------------------------------
  def rows(self, features: Features, batch_size: int, multiple: int) -> tuple[dict[str, np.ndarray], int]:
    """(arrays, rows per batch) that batches are cut from: for a packing task its features packed
    (flaxbert.training.packing; a batch of about batch_size examples, rows a multiple of `multiple`),
    else the features as they are."""
    if not self.packed:
      return features.arrays, batch_size
    c = self.config
    # a device holds at least one row, so a row holds at most its share of the batch's examples
    per_row = max(1, min(c.max_examples_per_row, batch_size // multiple))
    cached = self._packed.get((id(features), per_row))
    if cached is None or cached[0] is not features:
      plan = packing.plan(features.arrays["input_mask"].sum(axis=1), c.max_seq_length, per_row, c.seed)
      packed = packing.pack(features.arrays, plan, per_row, self.token_arrays)
      cached = self._packed[(id(features), per_row)] = (features, packed)
    arrays = cached[1]
    return arrays, packing.rows_per_batch(batch_size, len(features), len(arrays["input_ids"]), multiple)

  def outputs(self, session: Session, params, features: Features) -> dict[str, np.ndarray]:
    """Every feature's head outputs, in order; padding rows dropped (exact evaluation)."""
    arrays, batch_size = self.rows(features, self.config.eval_batch_size, session.parallel)
    step = self._predict_step(session)
    parts = []
    for batch in batching.eval_batches(arrays, batch_size, jax.process_index(), jax.process_count()):
      out = step(params, sharding.global_batch(batch, session.mesh))
      if jax.process_count() > 1:
        out = multihost_utils.process_allgather(out, tiled=True)
      parts.append(jax.tree_util.tree_map(np.asarray, out))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    if self.packed:
      n = len(arrays["example_index"])
      return packing.unpack({k: v[:n] for k, v in merged.items()}, arrays,
                            features.arrays["input_mask"].sum(axis=1), self.token_outputs)
    return {k: v[:len(features)] for k, v in merged.items()}

  def _predict_step(self, session: Session):
    if id(session) not in self._predict:
      model = session.model
      self._predict[id(session)] = jax.jit(
          lambda params, batch: model.apply({"params": params}, batch, deterministic=True),
          in_shardings=(session.params_sharding, sharding.batch_sharding(session.mesh)),
          out_shardings=NamedSharding(session.mesh, P()))
    return self._predict[id(session)]

  # --- evaluation and prediction ----------------------------------------------------------------------
  def prepare_evals(self, session: Session, eval_sets: list) -> list:
    return [(name, examples, self.featurize(examples, session.tokenizer, training=False))
            for name, examples in eval_sets]

  def evaluate(self, session: Session, params, evals: list, out_dir: Path | None, training: bool = False) -> dict:
    results = {}
    for n, (name, examples, features) in enumerate(evals):
      outputs = self.outputs(session, params, features)
      if n == 0 and training:
        self.calibrate(examples, features, outputs)
      predictions = self.predict(examples, features, outputs)
      results.update(prefixed(n, name, self.score(examples, features, outputs, predictions)))
      if out_dir is not None and n == 0 and jax.process_index() == 0:
        self.write_predictions(out_dir / self.prediction_file, examples, predictions)
    return results

  def predict_file(self, session: Session, params, input_path: str, output: str) -> int:
    examples = self.read(input_path, False, "--input")
    features = self.featurize(examples, session.tokenizer, training=False)
    outputs = self.outputs(session, params, features)
    if jax.process_index() == 0:
      write_jsonl(storage.path(output), self.records(examples, features, outputs, self.predict(examples, features, outputs)))
    return len(examples)


def write_jsonl(path: Path, records: Sequence[dict]) -> None:
  """One JSON object a line, written atomically."""
  with atomic_file(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      for record in records:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
