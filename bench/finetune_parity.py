"""flaxbert's fine-tuning and transformers' BertFor… task model trained side by side, step for step.

`TorchSide` is bench/compare_finetune.py's PyTorch peer: transformers' class for the task's head
(BertForSequenceClassification for classification and regression, BertForTokenClassification,
BertForQuestionAnswering) started at flaxbert's initial weights — the whole tree flaxbert's job
starts from (`Task.initial_weights` merged into the seed's fresh init: the checkpoint's encoder, the
task head's init, a regression head's bias at the labels' mean), copied in under the export's
names — fed flaxbert's batches (for packed tasks the examples of each packed batch, one a row) and
trained as a transformers user trains: the head class's loss for the problem type, `backward`,
clipping at optim.max_grad_norm, torch.optim.AdamW over two parameter groups and the warmup-then-
linear-decay schedule (bench/training_parity.py's `torch_optimizer` and `clip_grad_norm`).

`step_parity` runs flaxbert's own fine-tuning job (`job.train_and_evaluate`, one metrics record and
optionally a checkpoint per step) and TorchSide on the same config with dropout off, and returns
every step's loss on both sides and, at the checkpointed steps, how far the weights and the
updates since the start are apart. tests/test_finetune_parity.py runs it on a tiny BERT;
`compare_finetune.py --parity_steps N` on the real model.
"""
import json
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import torch
import transformers

from bench.training_parity import clip_grad_norm, param_difference, relative, torch_optimizer
from flaxbert.errors import InputError
from flaxbert.finetune import job
from flaxbert.finetune.tasks.registry import get_task
from flaxbert.interop import names, task_models
from flaxbert.interop.pretrained import load
from flaxbert.models.task_heads import BertForTask
from flaxbert.training import batching, checkpoint, optim, sharding


def prepare(config: ml_collections.ConfigDict, eval_sets=()) -> tuple:
  """(task, loaded checkpoint, tokenizer, training features) as flaxbert's job prepares them: the
  task fitted on the training file (and checked against `eval_sets`, (name, examples) pairs)."""
  loaded = load(config.init)
  task = get_task(config)
  examples = task.read(config.train_path, True, "train_path")
  task.fit(examples, list(eval_sets))
  tokenizer = task.tokenizer(None, loaded, examples)
  return task, loaded, tokenizer, task.featurize(examples, tokenizer, training=True)


def initial_params(config: ml_collections.ConfigDict, task, arrays: dict, loaded) -> dict:
  """The tree flaxbert's job starts from: the seed's fresh init with the task's initial weights merged in."""
  model = BertForTask(loaded.config, task.head, task.num_outputs)
  shapes = {k: jax.numpy.zeros((1,) + v.shape[1:], v.dtype) for k, v in arrays.items()}
  fresh = nn.unbox(model.init(jax.random.key(config.seed), shapes)["params"])
  taken, merge = task.initial_weights(fresh, loaded)
  return jax.tree_util.tree_map(np.asarray, merge(fresh, taken))


def hf_tensors(params: dict, config, head: str) -> dict[str, np.ndarray]:
  """flaxbert's task-model params under the names and layouts of its transformers export."""
  return {e.hf: names.to_external(np.asarray(names.get_path(params, e.path)), e.kind, "hf")
          for e in task_models._entries(config, head)}  # pylint: disable=protected-access


class TorchSide:
  """transformers' task model for `task`, at flaxbert's initial weights, stepping through flaxbert's batches.

  own_head: the task head keeps the initial values transformers gives it (normal(0, 0.02) weights,
  bias 0, from torch's seed) instead of flaxbert's: the run a transformers user gets, who has no
  flaxbert init to copy; the encoder still starts from the checkpoint on both sides."""

  def __init__(self, config: ml_collections.ConfigDict, task, train, loaded, own_head: bool = False):
    torch.manual_seed(config.seed)
    self.task, self.train, self.seed, self.loaded = task, train, config.seed, loaded
    self.regression = bool(getattr(task, "regression", False))
    self.model = getattr(transformers, task_models.CLASSES[task.head]).from_pretrained(
        config.init, num_labels=2 if task.head == "span" else task.num_outputs,
        hidden_dropout_prob=config.model.hidden_dropout_prob,
        attention_probs_dropout_prob=config.model.attention_probs_dropout_prob)
    parallel = sharding.data_parallel(sharding.make_mesh(config.mesh))
    self.arrays, self.rows_per_batch = task.rows(train, config.batch_size, parallel)
    per_epoch = batching.steps_per_epoch(len(self.arrays["input_ids"]), self.rows_per_batch)
    self.total = max(1, int(np.ceil(config.num_epochs * per_epoch)))  # as flaxbert's job counts its steps
    state, start = self.model.state_dict(), initial_params(config, task, self.arrays, loaded)
    with torch.no_grad():
      for name, value in hf_tensors(start, loaded.config, task.head).items():
        if not (own_head and name.split(".")[0] in ("classifier", "qa_outputs")):
          state[name].copy_(torch.from_numpy(np.array(value)))
    self.recipe = optim.resolve(config.optim, self.total)
    self.optimizer, self.schedule = torch_optimizer(self.model, self.recipe)
    self.model.train()

  def inputs(self, batch: dict) -> dict[str, torch.Tensor]:
    """A flaxbert training batch as tensors, one example a row (a packed batch's examples unpacked)."""
    if self.task.packed:
      index = batch["example_index"][(batch["example_index"] >= 0) & (batch["example_mask"][:, None] > 0)]
      rows = {k: v[index] for k, v in self.train.arrays.items()}
    else:
      rows = {k: v[batch["example_mask"] > 0] for k, v in batch.items()}
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in rows.items()}
    return {k: v if v.is_floating_point() else v.long() for k, v in t.items()}  # scores stay scores

  def loss(self, out, t: dict) -> torch.Tensor:
    """The loss of the head's transformers class: MSELoss (regression), CrossEntropyLoss (a class,
    each labelled wordpiece, the mean of start and end)."""
    f = torch.nn.functional
    if self.regression:
      return f.mse_loss(out.logits[:, 0], t["label"])
    if self.task.head == "sequence":
      return f.cross_entropy(out.logits, t["label"])
    if self.task.head == "token":
      return f.cross_entropy(out.logits.reshape(-1, self.task.num_outputs), t["labels"].reshape(-1), ignore_index=-1)
    return 0.5 * (f.cross_entropy(out.start_logits, t["start_positions"])
                  + f.cross_entropy(out.end_logits, t["end_positions"]))

  def step(self, step: int) -> float:
    """Trains on flaxbert's batch `step`; returns its loss."""
    t = self.inputs(batching.train_batch(self.arrays, step, self.rows_per_batch, self.seed))
    out = self.model(input_ids=t["input_ids"], token_type_ids=t["segment_ids"], attention_mask=t["input_mask"])
    loss = self.loss(out, t)
    self.optimizer.zero_grad()
    loss.backward()
    if self.recipe.max_grad_norm > 0:
      clip_grad_norm(self.model, self.recipe.max_grad_norm)
    self.optimizer.step()
    self.schedule.step()
    return float(loss.detach())

  def outputs(self, features, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The head's outputs on every feature, one a row, dropout off."""
    self.model.eval()
    parts = []
    with torch.no_grad():
      for batch in batching.eval_batches(features.arrays, batch_size):
        t = {k: torch.from_numpy(batch[k]).long() for k in ("input_ids", "segment_ids", "input_mask")}
        out = self.model(input_ids=t["input_ids"], token_type_ids=t["segment_ids"], attention_mask=t["input_mask"])
        if self.task.head == "span":
          parts.append({"start_logits": out.start_logits.numpy(), "end_logits": out.end_logits.numpy()})
        else:
          parts.append({"logits": out.logits.numpy()})
    self.model.train()
    return {k: np.concatenate([p[k] for p in parts])[:len(features)] for k in parts[0]}

  def tensors(self) -> dict[str, np.ndarray]:
    """The weights under the export's names (those flaxbert's params map to)."""
    state = self.model.state_dict()
    return {e.hf: state[e.hf].detach().numpy().copy()
            for e in task_models._entries(self.loaded.config, self.task.head)}  # pylint: disable=protected-access


def checkpointed_params(workdir: Path) -> dict[int, dict]:
  """{step: params} of every checkpoint a fine-tuning workdir holds."""
  mngr = checkpoint.manager(workdir, asynchronous=False)
  try:
    return {step: jax.tree_util.tree_map(np.asarray, mngr.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]) for step in mngr.all_steps()}
  finally:
    mngr.close()


def step_parity(config: ml_collections.ConfigDict, workdir: Path, steps: int = 0, every: int = 0, log=print) -> dict:
  """Both sides over the run `config` defines (dropout must be 0), or over its first `steps` steps'
  worth of epochs (the schedule then spans those steps), with flaxbert's job in `workdir` (a new
  folder). every: a checkpoint each `every` steps (0: the last only), where the weights are
  compared. Returns each side's per-step losses, their largest relative difference, and per
  compared step the largest ‖flaxbert − torch‖ / ‖torch‖ over the weight tensors and the same for
  the updates (weights minus the shared initial weights) — the attention key biases left out, whose
  gradient is 0 in exact arithmetic (bench/training_parity.py's `zero_gradient`)."""
  if config.model.hidden_dropout_prob or config.model.attention_probs_dropout_prob:
    raise InputError("model.hidden_dropout_prob, model.attention_probs_dropout_prob: must be 0 (dropout off)")
  config = ml_collections.ConfigDict(config.to_dict())
  config.log_every_steps, config.eval_every_epoch = 1, False
  task, loaded, _, train = prepare(config)
  if steps:
    arrays, per_batch = task.rows(train, config.batch_size, sharding.data_parallel(sharding.make_mesh(config.mesh)))
    config.num_epochs = (steps - 0.5) / batching.steps_per_epoch(len(arrays["input_ids"]), per_batch)
  log(f"flaxbert: {config.task}, {config.num_epochs:g} epochs, checkpoints every {every or 'last'} step(s)")
  if every:
    config.checkpoint.every_steps, config.checkpoint.keep = every, 10_000
  job.train_and_evaluate(config, workdir)
  ours = [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
  saved = checkpointed_params(workdir)
  side = TorchSide(config, task, train, loaded)
  if side.total != len(ours):
    raise ValueError(f"flaxbert ran {len(ours)} steps, the torch side counts {side.total}")
  start, theirs, params = side.tensors(), [], {}
  log(f"torch: {side.total} steps")
  for step in range(side.total):
    theirs.append(side.step(step))
    if step + 1 in saved:
      a, b = hf_tensors(saved[step + 1], loaded.config, task.head), side.tensors()
      worst, where = param_difference(a, b)
      update, update_where = param_difference({k: a[k] - start[k] for k in a}, {k: b[k] - start[k] for k in b})
      params[str(step + 1)] = {"max_relative_difference": worst, "worst_tensor": where,
                               "update_max_relative_difference": update, "update_worst_tensor": update_where}
  diffs = relative(ours, theirs)
  return {"task": config.task, "steps": side.total, "rows_per_batch": side.rows_per_batch,
          "loss": {"flaxbert": ours, "torch": theirs, "max_relative_difference": max(diffs),
                   "worst_step": int(np.argmax(diffs)) + 1},
          "params": params, "recipe": side.recipe.to_dict()}
