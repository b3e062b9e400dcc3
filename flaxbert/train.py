"""Pretraining: the train state, one jitted train step, exact evaluation, and the loop around them.

`train_and_evaluate(config, workdir)` is the whole job; `flaxbert pretrain` only parses flags.
- The state is built from shapes (`jax.eval_shape`) and initialised by a jitted function straight
  into its sharded layout (flaxbert.sharding); nothing is materialised on one device first.
- `train_step(state, batch) -> (state, metrics)` is jitted once, donates the state, folds the
  step into the RNG for dropout, accumulates gradients over `optim.grad_accum_steps` micro-batches
  with exact large-batch normalisation, and returns metrics as sums plus denominators.
- Metrics stay on device until a log step. Checkpoints (flaxbert.checkpoint) hold params,
  optimizer state, step and RNG; the input position is the step (flaxbert.input_pipeline).
- Rerunning the same command resumes from the workdir's newest restorable checkpoint; a
  SIGTERM/SIGINT saves before exiting; a NaN/Inf loss stops the run without saving over the last
  good checkpoint; `WORKDIR/summary.json` is written at the end.
"""
import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from flaxbert import checkpoint, metrics, optim, sharding
from flaxbert.config import BertConfig
from flaxbert.errors import InputError
from flaxbert.heads import BertForPreTraining
from flaxbert.input_pipeline import DynamicMasking, PretrainingData
from flaxbert.interop import native
from flaxbert.losses import token_cross_entropy
from flaxbert.model import check_remat_policy
from flaxbert.tokenization import load_tokenizer

log = logging.getLogger("flaxbert")


# Dropout's PRNG (jax.random key implementations), the `rng_impl` config field:
#   threefry2x32  JAX's default: the same bits on any device count (partitionable threefry), which
#                 makes 1-vs-8-device equality and bit-exact resume across meshes possible
#   rbg           XLA's RngBitGenerator for bits, threefry for splitting: cheaper dropout masks;
#                 the bits depend on how the step is partitioned
#   unsafe_rbg    RngBitGenerator for splitting too: cheapest; same caveat
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def check_rng_impl(impl: str, field: str = "rng_impl") -> str:
  if impl not in RNG_IMPLS:
    raise InputError(f"{field}: expected one of {list(RNG_IMPLS)}, got {impl!r}")
  return impl


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer steps taken
  params: Any
  opt_state: Any
  rng: jax.Array  # base key data of `rng_impl`; dropout uses fold_in(rng, step)
  rng_impl: str = flax.struct.field(pytree_node=False, default="threefry2x32")  # RNG_IMPLS

  def train_items(self) -> dict:
    """What the checkpoint's `train` item holds (params are an item of their own)."""
    return {"step": self.step, "opt_state": self.opt_state, "rng": self.rng}


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
                    batch.get("position_ids"),  # packed rows (flaxbert.packing) restart them per sequence
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


def make_train_step(sums_fn, counts_fn, objective, tx: optax.GradientTransformation, schedule, accum_steps: int):
  """train_step(state, batch) -> (state, metric sums); the batch splits into accum_steps micro-batches.

  sums_fn(params, batch, rng) -> loss/metric sums; counts_fn(batch) -> the whole batch's
  denominators; objective(sums, counts) -> the scalar loss. Normalising every micro-batch by the
  whole batch's counts makes the accumulated gradient equal the large batch's.
  """

  def micro_grads(params, micro, rng, totals):
    def loss(p):
      sums = sums_fn(p, micro, rng)
      return objective(sums, totals), sums
    (_, sums), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return grads, sums

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=state.rng_impl), state.step)
    totals = counts_fn(batch)
    if accum_steps == 1:
      grads, sums = micro_grads(state.params, batch, rng, totals)
    else:
      micro = jax.tree_util.tree_map(lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), batch)

      def body(carry, xs):
        i, micro_batch = xs
        grads, sums = micro_grads(state.params, micro_batch, jax.random.fold_in(rng, i), totals)
        return jax.tree_util.tree_map(jnp.add, carry, (grads, sums)), None
      zero = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
          lambda: micro_grads(state.params, jax.tree_util.tree_map(lambda x: x[0], micro), rng, totals)))
      (grads, sums), _ = jax.lax.scan(body, zero, (jnp.arange(accum_steps), micro))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    sums = dict(sums, loss=objective(sums, totals), grad_norm=optax.tree.norm(grads),
                param_norm=optax.tree.norm(params), learning_rate=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), sums

  return train_step


def pretraining_step(model: nn.Module, tx: optax.GradientTransformation, schedule, accum_steps: int, nsp: bool):
  """make_train_step with the MLM (+ NSP) objective."""
  def counts(batch):
    return {"mlm_count": jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)),
            "nsp_count": jnp.asarray(batch["input_ids"].shape[0], jnp.float32)}
  return make_train_step(lambda p, b, rng: loss_sums(model, p, b, rng, deterministic=False, nsp=nsp),
                         counts, _objective, tx, schedule, accum_steps)


def jit_pretraining_step(model: nn.Module, tx, schedule, accum_steps: int, nsp: bool, shardings, mesh):
  """`pretraining_step` jitted as `train_and_evaluate` runs it (and the benchmarks time it): the
  state donated and laid out as `shardings`, the batch split over `mesh`'s data axes, the metrics
  replicated."""
  return jax.jit(pretraining_step(model, tx, schedule, accum_steps, nsp), donate_argnums=0,
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, NamedSharding(mesh, P())))


# --- state -------------------------------------------------------------------------------------


def boxed_param_shapes(model: nn.Module, inputs: tuple):
  """model.init's params as shapes (jax.ShapeDtypeStruct leaves, still boxed with their logical
  axis names) for `inputs`, model.init's positional arguments as jax.ShapeDtypeStruct trees."""
  return jax.eval_shape(lambda key: model.init(key, *_zeros(inputs)), jax.random.key(0))["params"]


def _zeros(inputs: tuple) -> tuple:
  """Zero arrays shaped as the jax.ShapeDtypeStruct leaves of `inputs`."""
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), inputs)


def create_train_state(model: nn.Module, tx, mesh, rules, seed: int, inputs: tuple, pretrained=None, merge=None,
                       rng_impl: str = "threefry2x32"):
  """(state, shardings): initialised by one jitted call straight into the sharded layout.

  inputs: model.init's positional arguments as jax.ShapeDtypeStruct trees (zeros are fed).
  rng_impl: dropout's PRNG (RNG_IMPLS); parameters are initialised with threefry whatever it is.
  pretrained, merge: `merge(fresh_params, pretrained) -> params` runs inside the jitted init, so
  loaded weights go straight to their shards (fine-tuning's encoder from a checkpoint).
  """
  boxed = boxed_param_shapes(model, inputs)
  params_sh = sharding.param_shardings(boxed, mesh, rules)
  abstract_params = nn.unbox(boxed)
  opt_sh = sharding.opt_state_shardings(tx, jax.eval_shape(tx.init, abstract_params), params_sh, mesh)
  replicated = NamedSharding(mesh, P())
  check_rng_impl(rng_impl)
  shardings = TrainState(step=replicated, params=params_sh, opt_state=opt_sh, rng=replicated, rng_impl=rng_impl)

  def init(key, pretrained):
    params = nn.unbox(model.init(key, *_zeros(inputs))["params"])
    if merge is not None:
      params = merge(params, pretrained)
    dropout_key = key if rng_impl == "threefry2x32" else jax.random.key(seed, impl=rng_impl)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.fold_in(dropout_key, 1)), rng_impl=rng_impl)
  with threefry_kernels():
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed), pretrained)
  return state, shardings


@contextlib.contextmanager
def threefry_kernels():
  """Programs traced inside draw threefry bits with jax's CUDA threefry kernel on a GPU (the same
  bits), not XLA's inlined rounds: the parameter init, one random draw per parameter shape, took
  53 s to compile on an H100 (BERT base, jax 0.11.2) that way. Elsewhere this changes nothing."""
  previous = jax.config.jax_threefry_gpu_kernel_lowering
  jax.config.update("jax_threefry_gpu_kernel_lowering", True)
  try:
    yield
  finally:
    jax.config.update("jax_threefry_gpu_kernel_lowering", previous)


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


class StopRequest:
  """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits at the next step boundary."""

  def __init__(self):
    self.signal = None
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, _frame):
    self.signal = signal.Signals(signum).name

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def _start_state(config, workdir: Path, mngr, state: TrainState) -> TrainState:
  """The workdir's newest checkpoint; else init_from (params or full state); else the fresh state."""
  found = checkpoint.resume(mngr, state.params, state.train_items())
  if found is not None:
    step, params, train, _ = found
    log.info("resuming %s from step %d", workdir, step)
    return state.replace(params=params, **train)
  if config.init_from:
    source = Path(config.init_from)
    src = checkpoint.manager(source, asynchronous=False)
    try:
      full = config.init_mode == "full_state"
      if config.init_mode not in ("params", "full_state"):
        raise InputError(f"init_mode: expected 'params' or 'full_state', got {config.init_mode!r}")
      found = checkpoint.restore_latest(src, state.params, state.train_items() if full else None)
    finally:
      src.close()
    if found is None:
      raise InputError(f"init_from {source}: no restorable checkpoint under {source / checkpoint.CHECKPOINTS}")
    step, params, train, _ = found
    log.info("initialising from %s step %d (%s)", source, step, config.init_mode)
    return state.replace(params=params, **train) if full else state.replace(params=params)
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       devices: list | None = None) -> dict:
  """Pretrains as `config` says, in `workdir` (resuming what is there); returns the summary.

  devices: the devices of the mesh (default: all of them).
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  sharding.initialize_distributed()
  if not config.dataset_dir:
    raise InputError("dataset_dir: required (a folder written by `flaxbert prepare`)")
  if not (isinstance(config.num_train_steps, int) and config.num_train_steps >= 1):
    raise InputError(f"num_train_steps: expected a positive integer, got {config.num_train_steps!r}")
  remat = check_remat_policy(config.model.remat_policy, "model.remat_policy")
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_from_config(config.sharding_rules)
  masking = DynamicMasking(config.masked_lm_prob, config.max_predictions_per_seq, config.whole_word_mask)
  data = PretrainingData(config.dataset_dir, "train", global_batch_size=config.global_batch_size,
                         seed=config.seed, masking=masking, max_examples_per_row=config.max_examples_per_row)
  eval_data = PretrainingData(config.dataset_dir, "validation", global_batch_size=config.global_batch_size,
                              seed=config.seed, masking=masking, max_examples_per_row=config.max_examples_per_row)
  settings = data.builder.info.metadata["settings"]
  nsp = bool(settings["random_next_sentence"])
  cfg = bert_config(config, data.builder.info.metadata["tokenizer"]["vocab_size"], data.max_seq_length)
  model = BertForPreTraining(cfg, remat_policy=remat, scan_layers=config.model.scan_layers)
  accum = config.optim.grad_accum_steps
  if accum < 1 or config.global_batch_size % (accum * jax.process_count()):
    raise InputError(f"optim.grad_accum_steps ({accum}) must divide the global batch ({config.global_batch_size})")
  tx, schedule = optim.build_optimizer(config.optim), optim.learning_rate_schedule(config.optim)
  _record_model(workdir, cfg, config.dataset_dir)  # after the config checks: a refused run writes nothing
  ids = jax.ShapeDtypeStruct((1, data.max_seq_length), jnp.int32)
  state, shardings = create_train_state(model, tx, mesh, rules, config.seed, (ids,), rng_impl=config.rng_impl)
  mngr = checkpoint.manager(workdir, every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints)
  state = _start_state(config, workdir, mngr, state)
  batch_sh = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  train_step = jit_pretraining_step(model, tx, schedule, accum, nsp, shardings, mesh)
  eval_step = jax.jit(make_eval_step(model, nsp), in_shardings=(shardings.params, batch_sh),
                      out_shardings=replicated)

  start = int(state.step)
  flops = metrics.bert_flops_per_sequence(cfg, data.max_seq_length, data.max_predictions, with_nsp=nsp)
  peak = metrics.peak_flops(jax.devices()[0].device_kind, cfg.dtype) or metrics.measure_matmul_peak(cfg.dtype)
  writer = metrics.MetricWriter(workdir)
  progress = metrics.ProgressBar(config.num_train_steps, start, config.global_batch_size)
  acc, last, evals, stop = metrics.MetricsAccumulator(), {}, {}, StopRequest()
  steps_timed, t0, stopped_by = 0, None, None
  try:
    batches = data.iterate(start)
    for step in range(start, config.num_train_steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, step_metrics = train_step(state, sharding.global_batch(next(batches), mesh))
      acc.add(step_metrics)
      done = step + 1
      if t0 is None:  # the first step compiles; time the steady state from its end
        jax.block_until_ready(state.step)
        t0, progress_start = time.perf_counter(), done
        progress.mark_compiled(done)
      stopping = stop.signal is not None  # read once: a signal arriving later is handled next step
      final = done == config.num_train_steps or stopping
      if done % config.log_every_steps == 0 or final:
        last = metrics.summarize(acc.sums, acc.steps)
        metrics.check_finite(last, done)
        elapsed, steps_timed = time.perf_counter() - t0, done - progress_start
        if steps_timed:
          rate = steps_timed * config.global_batch_size / elapsed
          last.update(examples_per_second=rate, tokens_per_second=rate * data.max_seq_length,
                      mfu=metrics.mfu(flops * config.global_batch_size, elapsed / steps_timed, peak, mesh.size))
        writer.write_scalars(done, last)
        progress.update(done, last)
        acc = metrics.MetricsAccumulator()
      if (config.eval_every_steps and done % config.eval_every_steps == 0) or final:
        evals = {f"eval_{k}": v for k, v in evaluate(eval_step, state.params, eval_data, mesh,
                                                      config.eval_max_batches).items()}
        writer.write_scalars(done, evals)
        progress.note(done, evals)
      if done % config.checkpoint_every_steps == 0 or final:
        metrics.check_finite({"loss": float(step_metrics["loss"])}, done)  # never save a diverged state
        checkpoint.save(mngr, done, state.params, state.train_items(),
                        {"step": done, "data_position": done, "seed": config.seed}, force=final)
      if stopping:
        stopped_by = stop.signal
        log.warning("%s received: saved step %d; rerun the same command to resume", stop.signal, done)
        break
    if not evals:  # nothing was left to train (a finished run, rerun): evaluate what was restored
      evals = {f"eval_{k}": v for k, v in evaluate(eval_step, state.params, eval_data, mesh,
                                                    config.eval_max_batches).items()}
  finally:
    stop.restore()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  summary = {"step": int(state.step), "num_train_steps": config.num_train_steps, "stopped_by": stopped_by,
             "final_train_metrics": last, "final_eval_metrics": evals, "model": cfg.to_dict(),
             "devices": mesh.size, "device_kind": jax.devices()[0].device_kind,
             "peak_flops_per_device": peak, "flops_per_sequence": flops}
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
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
