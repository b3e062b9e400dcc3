"""The fine-tuning job: one sequence for every task family, on the machinery pretraining runs on.

`train_and_evaluate(config, workdir)` fine-tunes for `config.task` (any family of
flaxbert.finetune.tasks.registry): the family reads and checks the data, gives the tokenizer,
the model and its initial weights (a checkpoint's encoder, a BERT2BERT warm start); the train
state is built straight into its sharded layout (flaxbert.training.state), the one train step runs
the family's loss (flaxbert.training.step), and the one training loop (flaxbert.training.loop)
resumes, logs, evaluates after each epoch and at the end, checkpoints and stops on SIGTERM.
WORKDIR/eval_results.json gets the final dev scores (one flat JSON object; a second, third… eval
file's scores prefixed with its name) and the family writes its predictions for the first eval
file. `evaluate`, `predict` and `generate_file` restore a workdir (its task.json says which family,
flaxbert.finetune.workdir) and run the family's evaluation, prediction or generation.
"""
import itertools
import logging
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from flaxbert.atomic import check_destination
from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.finetune import workdir as workdir_lib
from flaxbert.finetune.tasks.base import Session, Task, prefixed
from flaxbert.finetune.tasks.registry import family, get_task
from flaxbert.interop import task_models
from flaxbert.interop.pretrained import EXPORT_KIND, is_export
from flaxbert.interop.tensors import check_params
from flaxbert.models.config import BertConfig
from flaxbert.text.tokenization import load_tokenizer
from flaxbert.training import batching, checkpoint, loop, optim, run_record, sharding, workdir_lock
from flaxbert.training.state import boxed_param_shapes, create_train_state
from flaxbert.training.step import compile_train_step

log = logging.getLogger("flaxbert")


def _mesh(config: ml_collections.ConfigDict, devices) -> tuple:
  mesh = sharding.make_mesh(config.mesh, devices)
  return mesh, sharding.rules_from_config(config.mesh.sharding_rules)


def _check_run(config: ml_collections.ConfigDict, mesh) -> None:
  """The settings every family's training needs, before anything is written."""
  if not (isinstance(config.num_epochs, (int, float)) and not isinstance(config.num_epochs, bool)
          and config.num_epochs > 0):
    raise InputError(f"num_epochs: expected a number > 0, got {config.num_epochs!r}")
  sharding.check_batch_size("batch_size", config.batch_size, mesh, config.optim.grad_accum_steps)
  sharding.check_batch_size("eval_batch_size", config.eval_batch_size, mesh)
  loop.check_cadence(log_every_steps=config.log_every_steps, **{"checkpoint.every_steps": config.checkpoint.every_steps,
                                                              "checkpoint.keep": config.checkpoint.keep})


class Scores(dict):
  """A run's final dev scores ({} when stopped early or without eval data); `stopped_by` names
  the signal (SIGTERM…) that stopped the run early, else None."""
  stopped_by: str | None = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, devices=None) -> dict:
  """Fine-tunes as `config` says in `workdir` (resuming what is there); returns the final dev
  scores (a Scores dict, which also says whether a signal stopped the run early)."""
  workdir = storage.path(workdir)
  workdir_lib.check_new_or_finetune(workdir)
  workdir_lib.check_task(workdir, config.task)
  task = get_task(config)
  task.check_config()
  sharding.initialize_distributed(config.distributed)  # before anything asks jax for its devices
  mesh, rules = _mesh(config, devices)
  _check_run(config, mesh)
  if not task.needs_training():
    task.load_init()
    workdir.mkdir(parents=True, exist_ok=True)
    return _score_untrained(task, workdir)
  train = task.read(config.train_path, True, "train_path")  # the data is read and checked before anything is written
  eval_sets = task.eval_sets()
  task.fit(train, eval_sets)
  loaded = task.load_init()
  with workdir_lock.hold(workdir):  # one writer per workdir, with the settings its checkpoints had
    settings = run_record.check(workdir, config, checkpoint.has_steps(workdir))
    return _train(task, workdir, mesh, rules, train, eval_sets, loaded, settings)


def _train(task: Task, workdir: Path, mesh, rules, train, eval_sets, loaded, settings) -> dict:
  c = task.config
  tokenizer = task.tokenizer(workdir, loaded, train)
  cfg = task.model_config(loaded, tokenizer)
  model = task.build_model(cfg)
  session = Session(mesh, rules, tokenizer, model)
  data = task.training_data(train, session)
  record = {"kind": task.kind, "task": c.task, "state": task.state(), "model": cfg.to_dict(), **task.record()}
  record.setdefault("defaults", {})
  workdir_lib.check_record(workdir, record)
  if jax.process_index() == 0 and not (workdir / "tokenizer_config.json").is_file():
    tokenizer.save(workdir)  # evaluate/predict/embed/generate read the workdir's own vocabulary
  evals = task.prepare_evals(session, eval_sets)

  per_epoch = batching.steps_per_epoch(data.rows, data.rows_per_batch)
  total = max(1, int(np.ceil(c.num_epochs * per_epoch)))
  opt_config = optim.resolve(c.optim, total)
  tx, schedule = task.optimizer(opt_config, loaded), optim.learning_rate_schedule(opt_config)
  described = task.describe()
  log.info("%s%s: %s, %d steps (%d per epoch); %s", c.task, f" ({described})" if described else "", data.summary,
           total, per_epoch, optim.describe(opt_config))
  shapes = task.input_shapes(session)
  pretrained, merge = task.initial_weights(nn.unbox(boxed_param_shapes(model, shapes)), loaded)
  state, shardings = create_train_state(model, tx, mesh, rules, c.seed, shapes, pretrained, merge, rng_impl=c.rng_impl)
  session.params_sharding = shardings.params
  del pretrained, loaded
  train_step = compile_train_step(lambda p, b, rng: task.loss_sums(model, p, b, rng), task.counts, task.objective,
                                  tx, schedule, c.optim.grad_accum_steps, shardings, mesh)

  def batches(start: int):
    for step in itertools.count(start):
      local = batching.local_slice(data.batch(step), jax.process_index(), jax.process_count())
      yield sharding.global_batch(local, mesh)

  def evaluate_all(params, final: bool) -> dict:
    return task.evaluate(session, params, evals, workdir if final else None, training=True) if evals else {}

  cadence = loop.Cadence(total_steps=total, log_every_steps=c.log_every_steps,
                         checkpoint_every_steps=c.checkpoint.every_steps, keep_checkpoints=c.checkpoint.keep,
                         eval_every_steps=per_epoch if c.eval_every_epoch else 0, epoch_steps=per_epoch)
  outcome = loop.train(workdir, state, train_step, batches, cadence, evaluate_all, batch_size=c.batch_size,
                       meta={"seed": c.seed}, started=settings)
  if outcome.stopped_by is None and evals:
    learned = task.learned_defaults()  # what the final evaluation chose (a threshold) for later commands
    if learned:
      workdir_lib.check_record(workdir, {**record, "defaults": {**record["defaults"], **learned}})
    workdir_lib.write_json(workdir / workdir_lib.RESULTS_FILE, outcome.eval_metrics)
  scores = Scores(outcome.eval_metrics)
  scores.stopped_by = outcome.stopped_by
  return scores


def _score_untrained(task: Task, workdir: Path) -> dict:
  """A family that can do without training data (extractive summarization: centroid ranking)
  scores the encoder as it is."""
  from flaxbert.finetune.embed import Embedder  # pylint: disable=import-outside-toplevel
  c = task.config
  embedder = Embedder(c.init, c.pooling, c.max_seq_length, c.eval_batch_size, c.lower_case)
  results = {}
  for n, (name, examples) in enumerate(task.eval_sets()):
    scores, predictions = task.score_unsupervised(examples, embedder)
    results.update(prefixed(n, name, scores))
    if n == 0 and jax.process_index() == 0:
      task.write_predictions(workdir / task.prediction_file, examples, predictions)
  if not results:
    raise InputError("eval_path: required (no train_path: the encoder is scored without training)")
  workdir_lib.write_json(workdir / workdir_lib.RESULTS_FILE, results)
  return results


# --- a finished (or interrupted) workdir ----------------------------------------------------------


def restore(workdir: str | Path, config: ml_collections.ConfigDict | None = None, devices=None):
  """(task, session, params) from a fine-tuning workdir's task.json, tokenizer and newest
  restorable checkpoint, or from a transformers task folder (BertForSequenceClassification…,
  flaxbert.interop.task_models). config: the command's (evaluate, predict), which must be for the
  task the model was trained for; None: the workdir's own record (generate, convert)."""
  workdir = storage.path(workdir)
  sharding.initialize_distributed(True if config is None else config.distributed)
  head = None if (workdir / workdir_lib.TASK_FILE).is_file() else task_models.head_of(workdir)
  if head is not None:
    return _restore_transformers(workdir, head, config, devices)
  record = workdir_lib.read_record(workdir)
  if config is None:
    task = family(record["kind"]).from_record(record)
  else:
    if record["task"] != config.task:
      raise InputError(f"{workdir / workdir_lib.TASK_FILE}: fine-tuned for {record['task']}, but the config is "
                       f"for {config.task}")
    task = get_task(config)
  task.load_state(record["state"])
  task.restore_settings(record)
  mesh, rules = _mesh_for(task, config, devices)
  cfg = BertConfig.from_dict(record["model"])
  model = task.build_model(cfg)
  session = Session(mesh, rules, task.tokenizer(workdir, None, ()), model)
  boxed = boxed_param_shapes(model, task.input_shapes(session))
  _, params, session.params_sharding = checkpoint.restore_sharded(workdir, boxed, mesh, rules)
  return task, session, params


def _mesh_for(task: Task, config: ml_collections.ConfigDict | None, devices) -> tuple:
  """The mesh of an evaluation or prediction; before a checkpoint is read, the evaluation batch
  (the command's config) must split over its data-parallel devices."""
  mesh, rules = _mesh(task.config, devices)
  if config is not None:
    sharding.check_batch_size("eval_batch_size", config.eval_batch_size, mesh)
  return mesh, rules


def _restore_transformers(path: Path, head: str, config: ml_collections.ConfigDict | None, devices):
  """(task, session, params) of a transformers task folder with a `head` model, for the config's task."""
  if config is None:
    raise InputError(f"{path}: a transformers {task_models.CLASSES[head]} folder; this command needs the config of "
                     "its task (--config finetune:TASK)")
  task = get_task(config)
  if getattr(task, "head", None) != head:
    raise InputError(f"{path}: a transformers {task_models.CLASSES[head]} folder, but the config is for "
                     f"{config.task} (a {task.kind} task)")
  task.check_config()
  mesh, rules = _mesh_for(task, config, devices)
  read = task_models.read(path)
  task.load_hf_labels(read.labels, read.problem_type, read.threshold, str(path / "config.json"))
  task.check_length(read.config)
  task.use_default_layout()
  model = task.build_model(read.config)
  session = Session(mesh, rules, load_tokenizer(path, lower_case=config.lower_case), model)
  boxed = boxed_param_shapes(model, task.input_shapes(session))
  session.params_sharding = sharding.param_shardings(boxed, mesh, rules)
  check_params(read.params, nn.unbox(boxed), str(path))
  params = jax.tree_util.tree_map(lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda i: x[i]),
                                  read.params, session.params_sharding)
  return task, session, params


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path, devices=None) -> dict:
  """Scores the workdir's newest checkpoint on config.eval_path; writes the scores and the first
  file's predictions to WORKDIR/evaluations/STEM/ (STEM: the first eval file's name)."""
  workdir = storage.path(workdir)
  task, session, params = restore(workdir, config, devices)
  sets = task.eval_sets()
  if not sets:
    raise InputError("eval_path: required")
  task.check(sets)
  out = workdir_lib.evaluation_dir(workdir, sets[0][0], config.eval_path)
  results = task.evaluate(session, params, task.prepare_evals(session, sets), out)
  workdir_lib.write_json(out / workdir_lib.RESULTS_FILE, results)
  log.info("scores and predictions of %s in %s", config.eval_path, out)
  return results


def predict(config: ml_collections.ConfigDict, workdir: str | Path, input_path: str, output: str,
            devices=None) -> int:
  """Writes the predictions of the workdir's model for `input_path` to `output`; returns how many."""
  task, session, params = restore(workdir, config, devices)
  return task.predict_file(session, params, input_path, output)


def generate_file(workdir: str | Path, input_path: str | Path, output: str | Path, beam_size: int | None = None,
                  length_penalty: float | None = None, batch_size: int | None = None) -> int:
  """`flaxbert generate`: one output line per line of `input_path` from a seq2seq workdir; unset
  options take what the workdir recorded."""
  kind = workdir_lib.read_record(workdir)["kind"]
  if not hasattr(family(kind), "generate_file"):
    raise InputError(f"{workdir}: a {kind} workdir; generate needs a translation or summarization_abstractive "
                     "one (use `flaxbert predict` for this one)")
  task, session, params = restore(workdir)
  return task.generate_file(session, params, input_path, output, beam_size, length_penalty, batch_size)


def export_hf(workdir: str | Path, dst: str | Path, overwrite: bool = False) -> str:
  """`flaxbert convert WORKDIR DST --to hf` of a fine-tuning workdir: the transformers folder of its
  task (BertForSequenceClassification…, EncoderDecoderModel); returns the class written."""
  check_destination(dst, overwrite, [workdir], is_export, EXPORT_KIND)  # before the restore
  task, session, params = restore(workdir)
  return task.export_hf(session, jax.tree_util.tree_map(np.asarray, params), dst, overwrite, [workdir])
