"""The pretraining job: masked LM (+ next-sentence prediction) on a prepared dataset.

`train_and_evaluate(config, workdir)` is the whole job; `flaxbert pretrain` only parses flags. It
builds BertForPreTraining from the config and the dataset's vocabulary, the train state straight
into its sharded layout (flaxbert.training.state), the one train step with the MLM/NSP objective
(flaxbert.training.step: sums over denominators, exact accumulation over
`optim.grad_accum_steps` micro-batches), and runs the one training loop (flaxbert.training.loop):
resume from the workdir's newest restorable checkpoint, or start from `init_from` (a phase-1
run's parameters or full state); log, evaluate on the validation split (every example once),
save; SIGTERM/SIGINT saves and stops. `init_from` may also be a released model (a flaxbert export,
an HF BERT folder or a TF1 checkpoint): continued pretraining with its architecture and weights, a
fresh optimizer at step 0 (flaxbert.pretrain.init_from). The batch at a step is a function of
(seed, step) (flaxbert.pretrain.input_pipeline), so the input position is the step. `WORKDIR/summary.json` is
written at the end; the workdir also records its model (flaxbert_config.json) and vocabulary, so
`flaxbert.from_pretrained(WORKDIR)` and `flaxbert convert` read it.
"""
import functools
import logging
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from flaxbert import atomic, storage
from flaxbert.errors import InputError
from flaxbert.interop import native
from flaxbert.models import weights
from flaxbert.models.config import BertConfig
from flaxbert.models.encoder import check_remat_policy
from flaxbert.models.losses import token_cross_entropy
from flaxbert.models.pretraining import BertForPreTraining
from flaxbert.pretrain import init_from
from flaxbert.pretrain.input_pipeline import DynamicMasking, PretrainingData
from flaxbert.text.tokenization import load_tokenizer
from flaxbert.training import checkpoint, flops, loop, metrics, optim, run_record, sharding, workdir_lock
from flaxbert.training.state import boxed_param_shapes, create_train_state
from flaxbert.training.step import compile_train_step, make_train_step

log = logging.getLogger("flaxbert")


def bert_config(config: ml_collections.ConfigDict, vocab_size: int, seq_len: int) -> BertConfig:
  m = config.model
  cfg = BertConfig.from_size(m.size, vocab_size=vocab_size, hidden_act=m.hidden_act,
                             hidden_dropout_prob=m.hidden_dropout_prob,
                             attention_probs_dropout_prob=m.attention_probs_dropout_prob,
                             max_position_embeddings=m.max_position_embeddings, dtype=m.dtype)
  if seq_len > cfg.max_position_embeddings:
    raise InputError(f"the dataset's max_seq_length {seq_len} exceeds model.max_position_embeddings "
                     f"{cfg.max_position_embeddings}")
  return cfg


# --- losses ------------------------------------------------------------------------------------


def loss_sums(model: nn.Module, params, batch: dict, rng, deterministic: bool, nsp: bool) -> dict:
  """Sums and counts of the MLM and NSP losses over a batch (rows weighted by `example_mask`)."""
  out = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                    batch.get("position_ids"),  # packed rows (flaxbert.training.packing) restart them per sequence
                    masked_positions=batch["masked_lm_positions"], deterministic=deterministic,
                    rngs=None if deterministic else {"dropout": rng})
  rows = batch.get("example_mask", jnp.ones(batch["input_ids"].shape[:1], jnp.int32)).astype(jnp.float32)
  nll, _, correct = token_cross_entropy(out.mlm_logits, batch["masked_lm_ids"])
  w = batch["masked_lm_weights"].astype(jnp.float32) * rows[:, None]
  sums = {"mlm_loss_sum": jnp.sum(nll * w), "mlm_count": jnp.sum(w), "mlm_correct": jnp.sum(correct * w)}
  if nsp:
    nsp_labels = batch["next_sentence_labels"]
    nsp_nll = token_cross_entropy(out.nsp_logits, nsp_labels)[0]
    sums.update(nsp_loss_sum=jnp.sum(nsp_nll * rows), nsp_count=jnp.sum(rows),
                nsp_correct=jnp.sum((jnp.argmax(out.nsp_logits, -1) == nsp_labels) * rows))
  return sums


def _objective(sums: dict, totals: dict) -> jax.Array:
  """Mean MLM loss over masked tokens (+ mean NSP loss over sequences), normalised by batch totals."""
  loss = sums["mlm_loss_sum"] / jnp.maximum(totals["mlm_count"], 1.0)
  if "nsp_loss_sum" in sums:
    loss += sums["nsp_loss_sum"] / jnp.maximum(totals["nsp_count"], 1.0)
  return loss


def _counts(batch: dict) -> dict:
  """The whole batch's denominators: masked positions, and sequences for NSP."""
  return {"mlm_count": jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)),
          "nsp_count": jnp.asarray(batch["input_ids"].shape[0], jnp.float32)}


def pretraining_step(model: nn.Module, tx: optax.GradientTransformation, schedule, accum_steps: int, nsp: bool):
  """The train step (not jitted) with the MLM (+ NSP) objective."""
  return make_train_step(lambda p, b, rng: loss_sums(model, p, b, rng, deterministic=False, nsp=nsp),
                         _counts, _objective, tx, schedule, accum_steps)


def jit_pretraining_step(model: nn.Module, tx, schedule, accum_steps: int, nsp: bool, shardings, mesh):
  """The pretraining step as `train_and_evaluate` runs it (and the benchmarks time it)."""
  return compile_train_step(lambda p, b, rng: loss_sums(model, p, b, rng, deterministic=False, nsp=nsp),
                            _counts, _objective, tx, schedule, accum_steps, shardings, mesh)


def make_eval_step(model: nn.Module, nsp: bool):
  def eval_step(params, batch: dict) -> dict:
    return loss_sums(model, params, batch, None, deterministic=True, nsp=nsp)
  return eval_step


def evaluate(eval_step, params, data: PretrainingData, mesh, max_batches: int) -> dict:
  """Metrics over the whole split (or its first max_batches), every example counted once."""
  acc = metrics.MetricsAccumulator()
  for i, batch in enumerate(data.eval_batches()):
    if max_batches and i >= max_batches:
      break
    acc.add(eval_step(params, sharding.global_batch(batch, mesh)))
  return metrics.summarize(acc.sums, max(acc.steps, 1))


# --- the job -----------------------------------------------------------------------------------


def _start(config, state):
  """A fresh workdir's state from another pretraining run's workdir: its parameters (or full state)."""
  source = storage.path(config.init_from)
  full = config.init_mode == "full_state"
  src = checkpoint.manager(source, asynchronous=False)
  try:
    found = checkpoint.restore_latest(src, state.params, state.train_items() if full else None)
  finally:
    src.close()
  if found is None:
    raise InputError(f"init_from {source}: no restorable checkpoint under {source / checkpoint.CHECKPOINTS}")
  step, params, train, _ = found
  log.info("initialising from %s step %d (%s)", source, step, config.init_mode)
  return state.replace(params=params, **train) if full else state.replace(params=params)


def _log_start(path: Path, kind: str, state):
  """A fresh workdir's state from a model's weights (already in it): logged, nothing else to do."""
  log.info("continuing pretraining from %s (%s): its weights, a fresh optimizer, step 0", path, kind)
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       devices: list | None = None) -> dict:
  """Pretrains as `config` says, in `workdir` (resuming what is there); returns the summary.

  devices: the devices of the mesh (default: all of them). The run holds the workdir's lock
  (flaxbert.training.workdir_lock) while it writes there, and a resume must have the settings the
  workdir's checkpoints were trained with (flaxbert.training.run_record).
  """
  workdir = storage.path(workdir)
  sharding.initialize_distributed(config.distributed)  # before anything asks jax (or Orbax) for its processes
  if not config.dataset_dir:
    raise InputError("dataset_dir: required (a folder written by `flaxbert prepare`)")
  if not (isinstance(config.num_train_steps, int) and config.num_train_steps >= 1):
    raise InputError(f"num_train_steps: expected a positive integer, got {config.num_train_steps!r}")
  loop.check_cadence(log_every_steps=config.log_every_steps, eval_every_steps=config.eval_every_steps,
                     **{"checkpoint.every_steps": config.checkpoint.every_steps, "checkpoint.keep": config.checkpoint.keep})
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch_size("global_batch_size", config.global_batch_size, mesh, config.optim.grad_accum_steps)
  source = init_from.locate(config.init_from, config.init_mode, workdir)  # before anything is written
  opt_config = optim.resolve(config.optim, config.num_train_steps)
  optim.check_config(opt_config)  # before the workdir exists: a refused run writes nothing
  with workdir_lock.hold(workdir):
    record = run_record.check(workdir, config, checkpoint.has_steps(workdir), resolved={"optim": opt_config.to_dict()})
    return _train(config, opt_config, workdir, mesh, source, record)


def dynamic_masking(config: ml_collections.ConfigDict) -> DynamicMasking:
  """How the input pipeline masks a dynamic-masking dataset for this pretraining config."""
  return DynamicMasking(config.masked_lm_prob, config.max_predictions_per_seq, config.whole_word_mask)


def _train(config: ml_collections.ConfigDict, opt_config: ml_collections.ConfigDict, workdir: Path, mesh, source,
           record) -> dict:
  remat = check_remat_policy(config.model.remat_policy, "model.remat_policy")
  rules = sharding.rules_from_config(config.mesh.sharding_rules)
  masking = dynamic_masking(config)
  data, eval_data = (PretrainingData(config.dataset_dir, split, global_batch_size=config.global_batch_size,
                                     seed=config.seed, masking=masking,
                                     max_examples_per_row=config.max_examples_per_row)
                     for split in ("train", "validation"))
  nsp = bool(data.builder.info.metadata["settings"]["random_next_sentence"])
  accum = config.optim.grad_accum_steps
  tx, schedule = optim.build_optimizer(opt_config), optim.learning_rate_schedule(opt_config)
  if source is not None and source.kind == "model":  # the checkpoint's architecture, this run's dropout and dtype
    m = config.model
    cfg = init_from.open_model(source, workdir, config.dataset_dir).replace(
        hidden_dropout_prob=m.hidden_dropout_prob, attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        dtype=m.dtype, param_dtype="float32")
    init_from.check_architecture(cfg, source, m, data.max_seq_length)
  else:
    cfg = bert_config(config, data.builder.info.metadata["tokenizer"]["vocab_size"], data.max_seq_length)
  model = BertForPreTraining(cfg, remat_policy=remat, scan_layers=config.model.scan_layers)
  _record_model(workdir, cfg, config.dataset_dir)  # after the config checks: a refused run writes nothing
  ids = jax.ShapeDtypeStruct((1, data.max_seq_length), jnp.int32)
  pretrained, merge, start = None, None, None
  if source is not None and source.kind == "workdir":
    start = lambda state: _start(config, state)
  elif source is not None and source.loaded is not None:  # a model's weights, merged into the sharded init
    pretrained, merge = init_from.initial_weights(nn.unbox(boxed_param_shapes(model, (ids,))), source.loaded,
                                                  str(source.path)), weights.merge
    start = functools.partial(_log_start, source.path, source.loaded.kind)
  state, shardings = create_train_state(model, tx, mesh, rules, config.seed, (ids,), pretrained, merge,
                                        rng_impl=config.rng_impl)
  if source is not None:
    source.loaded = pretrained = None  # the host copy of the weights is no longer needed
  train_step = jit_pretraining_step(model, tx, schedule, accum, nsp, shardings, mesh)
  eval_step = jax.jit(make_eval_step(model, nsp), in_shardings=(shardings.params, sharding.batch_sharding(mesh)),
                      out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  flops_per_sequence = flops.bert_flops_per_sequence(cfg, data.max_seq_length, data.max_predictions, with_nsp=nsp)
  peak = flops.peak_flops(jax.devices()[0].device_kind, cfg.dtype) or flops.measure_matmul_peak(cfg.dtype)
  batch = config.global_batch_size

  def throughput(steps_per_second: float) -> dict:
    rate = steps_per_second * batch
    return {"examples_per_second": rate, "tokens_per_second": rate * data.max_seq_length,
            "mfu": flops.mfu(flops_per_sequence * batch, 1.0 / steps_per_second, peak, mesh.size)}

  cadence = loop.Cadence(total_steps=config.num_train_steps, log_every_steps=config.log_every_steps,
                         checkpoint_every_steps=config.checkpoint.every_steps,
                         keep_checkpoints=config.checkpoint.keep, eval_every_steps=config.eval_every_steps)
  outcome = loop.train(
      workdir, state, train_step, lambda step: (sharding.global_batch(b, mesh) for b in data.iterate(step)), cadence,
      lambda params, final: evaluate(eval_step, params, eval_data, mesh, config.eval_max_batches),
      batch_size=batch, meta={"seed": config.seed},
      start=start, throughput=throughput, started=record)
  summary = {"recipe": config.recipe, "step": int(outcome.state.step), "num_train_steps": config.num_train_steps,
             "stopped_by": outcome.stopped_by, "final_train_metrics": outcome.train_metrics,
             "final_eval_metrics": {f"eval_{k}": v for k, v in outcome.eval_metrics.items()},
             "model": cfg.to_dict(), "devices": mesh.size, "device_kind": jax.devices()[0].device_kind,
             "peak_flops_per_device": peak, "flops_per_sequence": flops_per_sequence}
  if jax.process_index() == 0:
    atomic.write_json(workdir / "summary.json", summary, default=float)
  return summary


def _record_model(workdir: Path, cfg: BertConfig, dataset_dir: str) -> None:
  """WORKDIR/flaxbert_config.json (the model, as flaxbert's own format) and the vocabulary; a
  workdir that already holds a different model is an error, not silently overwritten."""
  path = workdir / native.CONFIG
  if path.exists():
    existing, _, _ = native.read_header(workdir)
    if existing.replace(dtype=cfg.dtype) != cfg:
      raise InputError(f"{path}: this workdir holds a different model ({existing}); use a new workdir")
    return
  load_tokenizer(dataset_dir).save(workdir)
  native.write_header(workdir, cfg, heads=True, pooler=True)
