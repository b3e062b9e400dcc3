"""Fine-tuning: pretraining's machinery (mesh, train step, optimizer, checkpoints, metrics) driven by a task.

`train_and_evaluate(config, workdir)` fine-tunes `config.init` (any checkpoint kind flaxbert reads)
on `config.train_path` for `config.task`, evaluates on `config.eval_path` after each epoch and at
the end, and writes WORKDIR/eval_results.json (one flat JSON object of the final dev scores; a
second, third… eval file's scores are prefixed with its file stem) plus the task's predictions for
the first eval file. `evaluate(config, workdir)` and `predict(config, workdir, input, output)` reuse
a finished (or interrupted) workdir. The workdir holds:
  task.json     the task, its learnt state (labels), the model config, max_seq_length, pooling,
                inter_sentence_layers (what evaluate/predict need to rebuild the model)
  vocab.txt / spm.model  the tokenizer the features were made with
  checkpoints/  Orbax steps (params, optimizer state, step, RNG); rerunning resumes exactly
  metrics.jsonl, events.*  training and evaluation curves
"""
import json
import logging
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from flaxbert import checkpoint, metrics, optim, packing, sharding
from flaxbert.atomic import atomic_file
from flaxbert.config import BertConfig
from flaxbert.errors import InputError
from flaxbert.pretrained import load
from flaxbert.tasks import batching
from flaxbert.tasks.base import Features, existing
from flaxbert.tasks.model import BertForTask, encoder_weights, merge_encoder
from flaxbert.tasks.registry import get_task
from flaxbert.tokenization import load_tokenizer
from flaxbert.train import StopRequest, boxed_param_shapes, create_train_state, make_train_step

log = logging.getLogger("flaxbert")
TASK_FILE = "task.json"
RESULTS_FILE = "eval_results.json"
MIN_SEQ_LENGTH = 8
EVALUATIONS = "evaluations"


def optimizer_section(config: ml_collections.ConfigDict, num_train_steps: int) -> ml_collections.ConfigDict:
  """The flaxbert.optim section for a fine-tuning run: warmup as a share of the steps."""
  return ml_collections.ConfigDict(dict(
      optimizer=config.optimizer, learning_rate=config.learning_rate, schedule="linear",
      warmup_steps=int(round(config.warmup_proportion * num_train_steps)), num_train_steps=num_train_steps,
      weight_decay=config.weight_decay, adam_b1=config.adam_b1, adam_b2=config.adam_b2,
      adam_eps=config.adam_eps, max_grad_norm=config.max_grad_norm, grad_accum_steps=1))


class Job:
  """A task with its tokenizer, model and mesh: what training, evaluation and prediction share."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Path, cfg: BertConfig, tokenizer,
               devices=None):
    self.config, self.workdir, self.tokenizer = config, workdir, tokenizer
    self.task = get_task(config)
    if config.max_seq_length < MIN_SEQ_LENGTH:
      raise InputError(f"max_seq_length: {config.max_seq_length} leaves next to no room for text beside "
                       f"[CLS]/[SEP]; expected at least {MIN_SEQ_LENGTH} (BERT's recipes use 128–512)")
    if config.max_seq_length > cfg.max_position_embeddings:
      raise InputError(f"max_seq_length: {config.max_seq_length} exceeds the model's "
                       f"max_position_embeddings {cfg.max_position_embeddings}")
    self.cfg = cfg
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.rules = sharding.rules_from_config(config.sharding_rules)
    self.parallel = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    for field in ("batch_size", "eval_batch_size"):
      if config[field] < 1 or config[field] % self.parallel:
        raise InputError(f"{field}: {config[field]} must be a positive multiple of the data-parallel "
                         f"devices ({self.parallel})")
    if self.task.packed and not (isinstance(config.max_examples_per_row, int) and config.max_examples_per_row >= 1):
      raise InputError(f"max_examples_per_row: expected an integer >= 1, got {config.max_examples_per_row!r}")
    self._packed: dict = {}

  @property
  def model(self) -> BertForTask:
    c = self.config
    return BertForTask(self.cfg, self.task.head, self.task.num_outputs, c.pooling, c.inter_sentence_layers)

  def read(self, path: str, split: str | None, training: bool, field: str):
    return self.task.read(existing(path, field), split, training)

  def rows(self, features: Features, batch_size: int) -> tuple[dict[str, np.ndarray], int]:
    """(arrays, rows per batch) that batches are cut from: for a packing task its features packed
    (flaxbert.packing; a batch of about batch_size examples), else the features as they are."""
    if not self.task.packed:
      return features.arrays, batch_size
    c = self.config
    # a device holds at least one row, so a row holds at most its share of the batch's examples
    per_row = max(1, min(c.max_examples_per_row, batch_size // self.parallel))
    cached = self._packed.get((id(features), per_row))
    if cached is None or cached[0] is not features:
      plan = packing.plan(features.arrays["input_mask"].sum(axis=1), c.max_seq_length, per_row, c.seed)
      packed = packing.pack(features.arrays, plan, per_row, self.task.token_arrays)
      cached = self._packed[(id(features), per_row)] = (features, packed)
    arrays = cached[1]
    return arrays, packing.rows_per_batch(batch_size, len(features), len(arrays["input_ids"]), self.parallel)

  def outputs(self, params, features, predict_step) -> dict[str, np.ndarray]:
    """Every feature's head outputs, in order; padding rows dropped (exact evaluation)."""
    arrays, batch_size = self.rows(features, self.config.eval_batch_size)
    parts = []
    for batch in batching.eval_batches(arrays, batch_size, jax.process_index(), jax.process_count()):
      out = predict_step(params, sharding.global_batch(batch, self.mesh))
      if jax.process_count() > 1:
        out = multihost_utils.process_allgather(out, tiled=True)
      parts.append(jax.tree_util.tree_map(np.asarray, out))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    if self.task.packed:
      rows = len(arrays["example_index"])
      return packing.unpack({k: v[:rows] for k, v in merged.items()}, arrays,
                            features.arrays["input_mask"].sum(axis=1), self.task.token_outputs)
    return {k: v[:len(features)] for k, v in merged.items()}

  def predict_step(self, params_sharding):
    model = self.model

    def step(params, batch):
      return model.apply({"params": params}, batch, deterministic=True)
    return jax.jit(step, in_shardings=(params_sharding, sharding.batch_sharding(self.mesh)),
                   out_shardings=NamedSharding(self.mesh, P()))

  def evaluate_files(self, params, predict_step, evals, write_predictions: bool, out_dir: Path | None = None) -> dict:
    """Scores of each (name, examples, features); the first file's unprefixed. Predictions of the
    first go to out_dir (default: the workdir)."""
    results = {}
    for n, (name, examples, features) in enumerate(evals):
      outputs = self.outputs(params, features, predict_step)
      predictions = self.task.predict(examples, features, outputs)
      scores = self.task.score(examples, features, outputs, predictions)
      results.update({(k if n == 0 else f"{name}_{k}"): float(v) for k, v in scores.items()})
      if write_predictions and n == 0 and jax.process_index() == 0:
        self.task.write_predictions((out_dir or self.workdir) / self.task.prediction_file, examples, predictions)
    return results

  def eval_sets(self) -> list:
    c = self.config
    paths = [p for p in (c.eval_path or "").split(",") if p]
    sets = []
    for path in paths:
      examples = self.read(path, c.eval_split, False, "eval_path")
      sets.append((Path(path).stem, examples))
    return sets


def evaluation_dir(workdir: Path, name: str) -> Path:
  """WORKDIR/evaluations/NAME/: where `evaluate` on eval file NAME writes its scores and
  predictions, beside (never over) the fine-tuning run's own dev results."""
  return workdir / EVALUATIONS / name


def write_json(path: Path, value: dict) -> None:
  if jax.process_index() == 0:
    with atomic_file(path) as tmp:
      tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _task_record(job: Job, arrays: dict) -> dict:
  c = job.config
  inputs = {k: [list(v.shape[1:]), v.dtype.name] for k, v in sorted(arrays.items())}
  return {"task": c.task, "state": job.task.state(), "model": job.cfg.to_dict(), "inputs": inputs,
          "max_seq_length": c.max_seq_length, "pooling": c.pooling, "inter_sentence_layers": c.inter_sentence_layers}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, devices=None) -> dict:
  """Fine-tunes as `config` says in `workdir` (resuming what is there); returns the final dev scores."""
  workdir = Path(workdir)
  check_finetune_workdir(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  sharding.initialize_distributed()
  if not config.init:
    raise InputError("init: required (a pretrained checkpoint: flaxbert dir/workdir, HF dir or TF1 checkpoint)")
  loaded = load(config.init)
  cfg = loaded.config.replace(hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
                              dtype=config.dtype, param_dtype="float32")
  tokenizer = load_tokenizer(loaded.vocab or config.init, lower_case=config.lower_case)
  job = Job(config, workdir, cfg, tokenizer, devices)
  task, c = job.task, config
  if not c.train_path and hasattr(task, "score_unsupervised"):
    return _unsupervised(job)
  train_examples = job.read(c.train_path, c.train_split, True, "train_path")
  eval_sets = job.eval_sets()
  task.fit(train_examples, eval_sets)
  if not c.num_epochs > 0:
    raise InputError(f"num_epochs: expected a number > 0, got {c.num_epochs!r}")
  train = task.featurize(train_examples, tokenizer, training=True)
  if not len(train):
    raise InputError(f"train_path: {c.train_path}: none of its {len(train_examples)} example(s) gives a training "
                     "feature (see the warnings above); nothing to train on")
  check_record(workdir, _task_record(job, train.arrays))  # the per-example layout (packing may vary)
  train_arrays, train_batch = job.rows(train, c.batch_size)
  if jax.process_index() == 0:
    tokenizer.save(workdir)  # evaluate/predict/embed read the workdir's own vocabulary
  evals = [(name, ex, task.featurize(ex, tokenizer, training=False)) for name, ex in eval_sets]
  rows = len(train_arrays["input_ids"])
  per_epoch = batching.steps_per_epoch(rows, train_batch)
  total = max(1, int(np.ceil(c.num_epochs * per_epoch)))
  opt_config = optimizer_section(c, total)
  tx, schedule = optim.build_optimizer(opt_config), optim.learning_rate_schedule(opt_config)
  packed = f" packed into {rows} rows ({len(train) / rows:.2f} a row), {train_batch} rows a batch," if task.packed else ""
  log.info("%s: %d train examples → %d features,%s %d steps (%d per epoch); %s", c.task, len(train_examples),
           len(train), packed, total, per_epoch, optim.describe(opt_config))

  model = job.model
  shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((1,) + a.shape[1:], a.dtype), train_arrays)
  pretrained = encoder_weights(nn.unbox(boxed_param_shapes(model, (shapes,))), loaded.params, str(c.init))
  state, shardings = create_train_state(model, tx, job.mesh, job.rules, c.seed, (shapes,), pretrained, merge_encoder,
                                        rng_impl=c.rng_impl)
  del pretrained, loaded

  def sums_fn(params, batch, rng):
    out = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": rng})
    return task.loss_sums(out, batch)

  def objective(sums, counts):
    return sums["task_loss_sum"] / jnp.maximum(counts["task_count"], 1.0)

  replicated = NamedSharding(job.mesh, P())
  batch_sh = sharding.batch_sharding(job.mesh)
  train_step = jax.jit(make_train_step(sums_fn, task.counts, objective, tx, schedule, 1), donate_argnums=0,
                       in_shardings=(shardings, batch_sh), out_shardings=(shardings, replicated))
  predict_step = job.predict_step(shardings.params)

  def batch_at(step):
    batch = batching.train_batch(train_arrays, step, train_batch, c.seed, jax.process_index(), jax.process_count())
    return sharding.global_batch(batch, job.mesh)

  def evaluate_all(params, final: bool) -> dict:
    return job.evaluate_files(params, predict_step, evals, write_predictions=final) if evals else {}

  results, stopped_by = fit(c, workdir, state, train_step, batch_at, total, per_epoch, evaluate_all)
  if stopped_by is None and evals:
    write_json(workdir / RESULTS_FILE, results)
  return results


def fit(config: ml_collections.ConfigDict, workdir: Path, state, train_step, batch_at, total: int,
        per_epoch: int, evaluate) -> tuple[dict, str | None]:
  """The fine-tuning loop every task shares: resume, train to `total` steps, evaluate, checkpoint.

  batch_at(step) → the global batch of a step (a pure function of it, so resuming needs no data
  state); evaluate(params, final) → dev scores ({} without eval data), after each epoch when
  config.eval_every_epoch and at the end (final=True: the caller writes its predictions then).
  Checkpoints every config.checkpoint_every_steps, after each epoch and at the end; a SIGTERM/
  SIGINT saves and stops. Returns (the last scores, the signal that stopped the run or None).
  """
  c = config
  mngr = checkpoint.manager(workdir, every_steps=c.checkpoint_every_steps, keep=c.keep_checkpoints)
  found = checkpoint.resume(mngr, state.params, state.train_items())
  if found is not None:
    state = state.replace(params=found[1], **found[2])
    log.info("resuming %s from step %d", workdir, found[0])
  writer = metrics.MetricWriter(workdir)
  start = int(state.step)
  progress = metrics.ProgressBar(total, start, c.batch_size)
  acc, stop, results, stopped_by = metrics.MetricsAccumulator(), StopRequest(), {}, None
  try:
    for step in range(start, total):
      state, step_metrics = train_step(state, batch_at(step))
      acc.add(step_metrics)
      done, stopped_by = step + 1, stop.signal  # read once: a later signal is handled next step
      if done == start + 1:  # the one host sync outside log steps: seq/s counts from the compiled step
        jax.block_until_ready(step_metrics)
        progress.mark_compiled(done)
      stopping = stopped_by is not None
      final = done == total or stopping
      if done % c.log_every_steps == 0 or final:
        last = acc.summary()
        metrics.check_finite(last, done)
        writer.write_scalars(done, last)
        progress.update(done, last)
        acc = metrics.MetricsAccumulator()
      epoch_end = done % per_epoch == 0
      if (c.eval_every_epoch and epoch_end) or done == total:
        results = evaluate(state.params, done == total)
        if results:
          writer.write_scalars(done, {f"eval_{k}": v for k, v in results.items()})
          progress.note(done, results)
      if done % c.checkpoint_every_steps == 0 or epoch_end or final:
        checkpoint.save(mngr, done, state.params, state.train_items(), {"step": done, "seed": c.seed},
                        force=epoch_end or final)
      if stopping:
        log.warning("%s received: saved step %d; rerun the same command to resume", stopped_by, done)
        break
    if not results and stopped_by is None:  # a finished run, rerun: score what was restored
      results = evaluate(state.params, True)
  finally:
    stop.restore()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  return results, stopped_by


def _unsupervised(job: Job) -> dict:
  """A task that can do without training data (summarization: centroid ranking) scores the encoder as is."""
  from flaxbert.embed import Embedder  # pylint: disable=import-outside-toplevel
  c = job.config
  embedder = Embedder(c.init, c.pooling, c.max_seq_length, c.eval_batch_size, c.lower_case)
  results = {}
  for n, (name, examples) in enumerate(job.eval_sets()):
    scores, predictions = job.task.score_unsupervised(examples, embedder)
    results.update({(k if n == 0 else f"{name}_{k}"): float(v) for k, v in scores.items()})
    if n == 0 and jax.process_index() == 0:
      job.task.write_predictions(job.workdir / job.task.prediction_file, examples, predictions)
  if not results:
    raise InputError("eval_path: required (no train_path: the encoder is scored without training)")
  write_json(job.workdir / RESULTS_FILE, results)
  return results


def check_finetune_workdir(workdir: Path) -> None:
  """Refuses, before anything is written there, a workdir with checkpoints of another kind of run."""
  if (workdir / checkpoint.CHECKPOINTS).is_dir() and not (workdir / TASK_FILE).is_file():
    raise InputError(f"{workdir}: holds checkpoints but no {TASK_FILE}: not a fine-tuning workdir (a pretraining "
                     "one?); fine-tune into a new workdir, with this one as --config.init")


def check_record(workdir: Path, record: dict) -> None:
  """Writes task.json; an existing one for another task, labels or model is an error (new workdir)."""
  path = workdir / TASK_FILE
  if path.exists():
    old = json.loads(path.read_text())
    if old != json.loads(json.dumps(record)):
      raise InputError(f"{path}: this workdir was fine-tuned with another task/labels/model "
                       f"({old['task']}, {old['state']}); use a new workdir")
    return
  write_json(path, record)


def _restore(config: ml_collections.ConfigDict, workdir: Path, devices=None):
  """(job, params, predict_step) from a fine-tuning workdir's task.json and newest checkpoint."""
  path = workdir / TASK_FILE
  if not path.is_file():
    raise InputError(f"{workdir}: no {TASK_FILE}; not a fine-tuning workdir (run `flaxbert finetune` first)")
  record = json.loads(path.read_text())
  if record["task"] != config.task:
    raise InputError(f"{path}: fine-tuned for {record['task']}, but the config is for {config.task}")
  config = config.copy_and_resolve_references()
  for key in ("max_seq_length", "pooling", "inter_sentence_layers"):
    config[key] = record[key]
  cfg = BertConfig.from_dict(record["model"])
  job = Job(config, workdir, cfg, load_tokenizer(workdir, lower_case=config.lower_case), devices)
  job.task.load_state(record["state"])
  mesh, model = job.mesh, job.model
  # one dummy example in the recorded per-example layout, as the model reads it (packed or not)
  example = {k: np.ones((1, *shape), dtype) for k, (shape, dtype) in record["inputs"].items()}
  arrays, _ = job.rows(Features(example), job.parallel)
  dummy = {k: jax.ShapeDtypeStruct((1, *v.shape[1:]), v.dtype) for k, v in arrays.items()}
  _, params, params_sh = checkpoint.restore_sharded(workdir, boxed_param_shapes(model, (dummy,)), mesh, job.rules)
  return job, params, job.predict_step(params_sh)


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path, devices=None) -> dict:
  """Scores the workdir's newest checkpoint on config.eval_path; writes the scores and the first
  file's predictions to WORKDIR/evaluations/STEM/ (STEM: the first eval file's name)."""
  workdir = Path(workdir)
  job, params, predict_step = _restore(config, workdir, devices)
  sets = job.eval_sets()
  if not sets:
    raise InputError("eval_path: required")
  job.task.check(sets)
  evals = [(name, ex, job.task.featurize(ex, job.tokenizer, training=False)) for name, ex in sets]
  out = evaluation_dir(workdir, sets[0][0])
  results = job.evaluate_files(params, predict_step, evals, write_predictions=True, out_dir=out)
  write_json(out / RESULTS_FILE, results)
  return results


def predict(config: ml_collections.ConfigDict, workdir: str | Path, input_path: str, output: str,
            devices=None) -> int:
  """Writes the predictions of the workdir's model for `input_path` to `output`; returns how many."""
  job, params, predict_step = _restore(config, Path(workdir), devices)
  examples = job.read(input_path, config.eval_split, False, "--input")
  features = job.task.featurize(examples, job.tokenizer, training=False)
  outputs = job.outputs(params, features, predict_step)
  if jax.process_index() == 0:
    job.task.write_predictions(Path(output), examples, job.task.predict(examples, features, outputs))
  return len(examples)
