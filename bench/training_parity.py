"""One BERT trained by flaxbert and by transformers' PyTorch BertForPreTraining, step for step.

What bench/compare_training.py runs at BERT-mini on a real corpus and tests/test_training_parity.py
at tiny size: the same initial weights (flaxbert's init, exported with `save_pretrained(format="hf")`
and loaded by `transformers.BertForPreTraining.from_pretrained`), the same batches (flaxbert's input
pipeline over a dataset `flaxbert prepare` wrote with static masking and NSP; torch gets `labels` =
-100 except at the masked positions, and `next_sentence_label`), dropout off, float32, and the same
recipe, so that any difference is a difference of implementation:

  flaxbert  its own pretraining step as `flaxbert pretrain` compiles it
            (flaxbert.pretrain.job.jit_pretraining_step, the optimizer of flaxbert.training.optim);
  torch     as a transformers user trains: `model(**inputs).loss`, `loss.backward()`,
            `clip_grad_norm_(…, 1.0)`, `torch.optim.AdamW` over two parameter groups (no decay on
            LayerNorm and biases) and a `LambdaLR` warmup-then-linear-decay schedule; for
            `bert_adam`, `BertAdamWeightDecay` below, the original google-research/bert
            AdamWeightDecayOptimizer written as a torch.optim.Optimizer.

Both losses are the same definitions: flaxbert's MLM loss is Σ nll·masked_lm_weights / Σ weights, HF's
the mean over labels != -100, equal when the weights are 0/1 and the labels sit where the weights are 1
(`hf_labels` checks both); NSP is the mean over sequences on both; the total is their sum on both.

Gradient accumulation: flaxbert's step splits the batch into `grad_accum_steps` consecutive
micro-batches and divides each one's loss sums by the *whole* batch's counts, which gives the large
batch's gradient exactly. The torch side accumulates the same way (micro-batch loss sums over the
whole batch's counts, then one step), which is what a transformers user must write to train as with the
large batch: the common `loss / accum_steps` averages micro-batch means, and the masked-LM
denominators differ between micro-batches.
"""
import dataclasses
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
import transformers

import flaxbert
from flaxbert.errors import InputError
from flaxbert.interop import names
from flaxbert.interop.tensors import export_tensors
from flaxbert.models.pretraining import BertForPreTraining
from flaxbert.pretrain import job
from flaxbert.pretrain.input_pipeline import PretrainingData
from flaxbert.training import optim, sharding
from flaxbert.training.state import create_train_state

PARTS = ("loss", "mlm_loss", "nsp_loss")  # the per-step losses compared: total = mlm + nsp


# --- the torch side's optimizers ---------------------------------------------------------------


class BertAdamWeightDecay(torch.optim.Optimizer):
  """google-research/bert optimization.py's AdamWeightDecayOptimizer, step for step:

    m = b1·m + (1 − b1)·g;  v = b2·v + (1 − b2)·g²      (plain EMAs: no bias correction)
    update = m / (sqrt(v) + eps) + weight_decay·param     (decay joins the update …)
    param -= lr · update                                  (… and the learning rate scales both)

  Unlike torch.optim.AdamW, whose decay is lr·wd·param applied separately and whose moments are
  bias-corrected, so the two give different trajectories from the first step on.
  """

  def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, weight_decay: float = 0.0):
    super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

  @torch.no_grad()
  def step(self, closure=None):  # pylint: disable=arguments-differ
    if closure is not None:
      raise ValueError("BertAdamWeightDecay.step: closures are not supported")
    for group in self.param_groups:
      b1, b2 = group["betas"]
      for p in group["params"]:
        if p.grad is None:
          continue
        state = self.state[p]
        if not state:
          state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
        m, v = state["m"], state["v"]
        m.mul_(b1).add_(p.grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        update = m / (v.sqrt() + group["eps"])
        if group["weight_decay"]:
          update.add_(p, alpha=group["weight_decay"])
        p.add_(update, alpha=-group["lr"])


def no_decay(name: str) -> bool:
  """The original's exclude_from_weight_decay on HF parameter names: LayerNorm and every bias."""
  return "LayerNorm" in name or "bias" in name


def torch_optimizer(model: torch.nn.Module, opt: ml_collections.ConfigDict):
  """(optimizer, LambdaLR scheduler) for a resolved flaxbert optim section (flaxbert.training.optim):
  torch.optim.AdamW for "adamw", BertAdamWeightDecay for "bert_adam"; decay only where `no_decay`
  is false; lr·step/warmup during the warmup, then lr·(1 − step/num_train_steps), 0 from the end on."""
  named = list(model.named_parameters())
  groups = [{"params": [p for n, p in named if not no_decay(n)], "weight_decay": opt.weight_decay},
            {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}]
  kinds = {"adamw": torch.optim.AdamW, "bert_adam": BertAdamWeightDecay}
  if opt.optimizer not in kinds or opt.schedule != "linear":
    raise InputError(f"the torch side has {sorted(kinds)} with the linear schedule, not optim.optimizer="
                     f"{opt.optimizer!r}, optim.schedule={opt.schedule!r}")
  optimizer = kinds[opt.optimizer](groups, lr=opt.learning_rate, betas=(opt.adam_b1, opt.adam_b2), eps=opt.adam_eps)
  warmup, total = opt.warmup_steps, opt.num_train_steps
  schedule = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda s: s / warmup if s < warmup else max(0.0, 1.0 - s / total))
  return optimizer, schedule


# --- the batches -------------------------------------------------------------------------------


def hf_labels(batch: dict[str, np.ndarray]) -> np.ndarray:
  """[B, T] int64 `labels` as HF's BertForPreTraining takes them: the masked_lm_ids at the
  masked_lm_positions whose weight is 1, -100 elsewhere. Weights other than 0/1, or two weighted
  predictions at one position, cannot be written as HF labels and are refused."""
  w = batch["masked_lm_weights"]
  if not np.isin(w, (0.0, 1.0)).all():
    raise InputError("masked_lm_weights: HF's labels express weights 0 and 1 only")
  labels = np.full(batch["input_ids"].shape, -100, np.int64)
  rows, slots = np.nonzero(w > 0)
  positions = batch["masked_lm_positions"][rows, slots]
  if len(set(zip(rows.tolist(), positions.tolist()))) != len(rows):
    raise InputError("masked_lm_positions: a position is predicted twice in one row")
  labels[rows, positions] = batch["masked_lm_ids"][rows, slots]
  return labels


def torch_inputs(batch: dict[str, np.ndarray], nsp: bool = True) -> dict[str, torch.Tensor]:
  """One of flaxbert's batches as BertForPreTraining's keyword arguments; without `nsp` (a dataset of
  single segments) no next_sentence_label, so that the model returns no loss and `mlm_loss` is it."""
  t = lambda x: torch.from_numpy(np.asarray(x, np.int64))  # noqa: E731
  inputs = {"input_ids": t(batch["input_ids"]), "attention_mask": t(batch["input_mask"]),
            "token_type_ids": t(batch["segment_ids"]), "labels": t(hf_labels(batch))}
  return {**inputs, "next_sentence_label": t(batch["next_sentence_labels"])} if nsp else inputs


def read_batches(config: ml_collections.ConfigDict, steps: int) -> tuple[list[dict[str, np.ndarray]], dict]:
  """(the train split's first `steps` global batches as `flaxbert pretrain` reads them (seed, batch),
  the dataset's tokenizer metadata); the dataset must hold NSP pairs (both sides train MLM + NSP)."""
  data = PretrainingData(config.dataset_dir, "train", global_batch_size=config.global_batch_size, seed=config.seed)
  metadata = data.builder.info.metadata
  if not metadata["settings"]["random_next_sentence"]:
    raise InputError(f"{config.dataset_dir}: has no next-sentence pairs; prepare it with --random_next_sentence")
  return [data.batch(step) for step in range(steps)], metadata["tokenizer"]


# --- the two runs ------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """One side's training: per-step losses (PARTS, before each step's update) and the final weights."""
  losses: dict[str, list[float]]
  tensors: dict[str, np.ndarray]  # HF names


def train_flaxbert(config: ml_collections.ConfigDict, cfg: flaxbert.BertConfig, batches: list[dict],
                   initial: Path | None = None) -> Run:
  """flaxbert's pretraining step over `batches` on one device; `initial`: write the initial weights
  there as an HF folder (the torch side's starting point)."""
  opt = optim.resolve(config.optim, config.num_train_steps)
  tx, schedule = optim.build_optimizer(opt), optim.learning_rate_schedule(opt)
  model = BertForPreTraining(cfg)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  sharding.check_batch_size("global_batch_size", config.global_batch_size, mesh, opt.grad_accum_steps)
  ids = jax.ShapeDtypeStruct((1, batches[0]["input_ids"].shape[1]), jnp.int32)
  state, shardings = create_train_state(model, tx, mesh, sharding.rules_from_config(config.mesh.sharding_rules),
                                        config.seed, (ids,), rng_impl=config.rng_impl)
  if initial is not None:
    flaxbert.save_pretrained(initial, model, jax.device_get(state.params), format="hf", overwrite=True)
  step = job.jit_pretraining_step(model, tx, schedule, opt.grad_accum_steps, True, shardings, mesh)
  losses = {k: [] for k in PARTS}
  for batch in batches:
    state, sums = step(state, sharding.global_batch(batch, mesh))
    sums = jax.device_get(sums)
    mlm, nsp = sums["mlm_loss_sum"] / sums["mlm_count"], sums["nsp_loss_sum"] / sums["nsp_count"]
    for k, v in zip(PARTS, (sums["loss"], mlm, nsp)):
      losses[k].append(float(v))
  return Run(losses, export_tensors(jax.device_get(state.params), cfg, "hf", heads=True, pooler=True))


def train_torch(config: ml_collections.ConfigDict, cfg: flaxbert.BertConfig, initial: Path, batches: list[dict],
                dtype: torch.dtype = torch.float32) -> Run:
  """transformers' BertForPreTraining from `initial` over `batches`, optim.grad_accum_steps
  consecutive micro-batches per step (see the module's docstring), eager, in `dtype` (float64: a
  reference with fp32 rounding out of the way, to tell rounding from a difference of method)."""
  opt = optim.resolve(config.optim, config.num_train_steps)
  model = transformers.BertForPreTraining.from_pretrained(initial).to(dtype)
  original_pad_gradient(model)
  model.train()
  optimizer, schedule = torch_optimizer(model, opt)
  accum = opt.grad_accum_steps
  losses = {k: [] for k in PARTS}
  for batch in batches:
    inputs = torch_inputs(batch)
    if accum == 1:
      out = model(**inputs)
      out.loss.backward()
      loss = out.loss.detach()
      with torch.no_grad():
        mlm, nsp = parts(out, inputs, "mean")
    else:  # loss sums over the whole batch's counts, as flaxbert's step
      masked, rows = (inputs["labels"] != -100).sum(), inputs["input_ids"].shape[0]
      mlm = nsp = 0.0
      for micro in zip(*(torch.chunk(v, accum) for v in inputs.values())):
        micro = dict(zip(inputs, micro))
        mlm_sum, nsp_sum = parts(model(**micro), micro, "sum")
        (mlm_sum / masked + nsp_sum / rows).backward()
        mlm, nsp = mlm + mlm_sum.detach() / masked, nsp + nsp_sum.detach() / rows
      loss = mlm + nsp
    clip_grad_norm(model, opt.max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    for k, v in zip(PARTS, (loss, mlm, nsp)):
      losses[k].append(float(v))
  state = model.state_dict()  # under the names flaxbert's export writes (not the tied decoder copies)
  return Run(losses, {e.hf: state[e.hf].detach().numpy().copy() for e in names.entries(cfg, True, True)})


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
  """torch.nn.utils.clip_grad_norm_ with the global norm summed in float64.

  In float32 on the CPU, torch's vector norms (torch.linalg.vector_norm, torch._foreach_norm, so
  clip_grad_norm_ and get_total_norm; torch 2.13) are off by about 1e-5 relative for a tensor of a
  million elements (BERT-mini's first global gradient norm came out 7.4e-5 low), where a pairwise
  sum of squares is exact to 1e-7. That error scales every gradient of a clipped step, and Adam passes
  it on to the elements whose gradient is not large against eps (the attention query biases, the
  MLM output bias): after 4 steps of BERT-mini their weights were 2e-4 away from the same run in
  float64, while flaxbert's were 5e-7 away. The float64 norm is what clip_grad_norm_ means to
  compute; the clipping itself is clip_grad_norm_'s (clip_grads_with_norm_: max_norm / (norm + 1e-6))."""
  params = [p for p in model.parameters() if p.grad is not None]
  norm = torch.nn.utils.get_total_norm([p.grad.double() for p in params])
  torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
  return norm


def original_pad_gradient(model: transformers.BertForPreTraining) -> None:
  """Lets the [PAD] row of the word embeddings learn from its lookups, as in the original BERT and
  flaxbert: HF's BertEmbeddings is nn.Embedding(padding_idx=pad_token_id), whose backward drops the
  gradient of every lookup of id 0. Padded positions contribute none either way (nothing attends to
  them and no loss reads them), but create_pretraining_data.py's random replacement draws from the
  whole vocabulary, [PAD] included, so a real position can hold id 0 (about 1 in 500 batches of 32 ×
  20 predictions with a 30k vocabulary), and there the two would train differently."""
  model.bert.embeddings.word_embeddings.padding_idx = None


def mlm_loss(out, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
  """The masked-LM part of BertForPreTraining's `loss`, which is also BertForMaskedLM's whole loss
  (what run_mlm.py trains): CrossEntropyLoss over the vocabulary, labels of -100 ignored."""
  logits = out.prediction_logits
  return torch.nn.CrossEntropyLoss(reduction=reduction)(logits.view(-1, logits.shape[-1]), labels.view(-1))


def parts(out, inputs: dict, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
  """(MLM, NSP) as BertForPreTraining.forward computes its `loss` = MLM + NSP (CrossEntropyLoss(),
  ignoring labels of -100), with `reduction` "mean" (its) or "sum"."""
  nsp = torch.nn.CrossEntropyLoss(reduction=reduction)(out.seq_relationship_logits.view(-1, 2),
                                                       inputs["next_sentence_label"].view(-1))
  return mlm_loss(out, inputs["labels"], reduction), nsp


# --- the comparison ----------------------------------------------------------------------------


def relative(a: list[float], b: list[float]) -> list[float]:
  """|a − b| / |b| per step."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (np.abs(a - b) / np.abs(b)).tolist()


def zero_gradient(name: str) -> bool:
  """The attention key biases: adding b to every key adds q·b to all of a query's scores, which the
  softmax ignores, so their gradient is 0 in exact arithmetic. What either side computes for them
  is rounding noise that Adam's normalisation turns into updates; starting at 0, they stay at noise
  size (around 1e-8 where trained biases reach 1e-2), and their ‖Δ‖ / ‖w‖ is a ratio of two noises,
  not a measure of agreement. They are checked by their size instead (`compare`)."""
  return name.endswith("attention.self.key.bias")


def param_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str]:
  """(max over tensors of ‖a − b‖ / ‖b‖, the tensor where it is largest), the zero-gradient tensors
  left out; the same names on both."""
  if set(a) != set(b):
    raise ValueError(f"different tensors: {sorted(set(a) ^ set(b))}")
  diffs = {k: float(np.linalg.norm((a[k].astype(np.float64) - b[k]).ravel()) / np.linalg.norm(b[k].ravel()))
           for k in b if not zero_gradient(k)}
  worst = max(diffs, key=diffs.get)
  return diffs[worst], worst


def noise_size(tensors: dict[str, np.ndarray]) -> float:
  """max over layers of ‖key bias‖ / ‖query bias‖: the zero-gradient tensors against the same
  layer's query bias, which also starts at 0 and is trained by the same optimizer."""
  norm = lambda k: float(np.linalg.norm(tensors[k]))  # noqa: E731
  return max(norm(k) / norm(k.replace(".key.", ".query.")) for k in tensors if zero_gradient(k))


def compare(name: str, a: Run, b: Run, a_label: str, b_label: str, tolerance: float) -> dict:
  """Per-step losses of both, the largest relative differences, the final-weights difference, and
  whether every figure is within `tolerance` (the zero-gradient tensors: their size relative to the
  query biases, on each side)."""
  out = {"name": name, "sides": [a_label, b_label]}
  for k in PARTS:
    diffs = relative(a.losses[k], b.losses[k])
    out[k] = {a_label: a.losses[k], b_label: b.losses[k], "max_relative_difference": max(diffs),
              "worst_step": int(np.argmax(diffs))}
  out["final_params_max_relative_difference"], out["final_params_worst_tensor"] = param_difference(a.tensors,
                                                                                                   b.tensors)
  out["key_bias_over_query_bias"] = {a_label: noise_size(a.tensors), b_label: noise_size(b.tensors)}
  maxima = ([out[k]["max_relative_difference"] for k in PARTS] + [out["final_params_max_relative_difference"]]
            + list(out["key_bias_over_query_bias"].values()))
  out["within_tolerance"] = bool(max(maxima) <= tolerance)
  return out


def with_optim(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A copy of the pretraining config with optim fields replaced."""
  config = ml_collections.ConfigDict(config.to_dict())
  for k, v in fields.items():
    config.optim[k] = v
  return config


def run_all(config: ml_collections.ConfigDict, steps: int, accum: int, tolerance: float = 1e-4,
            float64_reference: bool = False, log=print) -> dict:
  """The comparisons for a pretraining config (dropout must be 0; its optim section is the recipe,
  optim.optimizer is overridden): AdamW; bert_adam; `accum` micro-batches against the whole batch;
  with `float64_reference`, both AdamW runs against the torch one in float64 too (how far each is
  from the run without float32 rounding). Returns {"comparisons": {name: compare(…)}, …} with the
  model and data they ran on."""
  if config.model.hidden_dropout_prob or config.model.attention_probs_dropout_prob:
    raise InputError("model.hidden_dropout_prob, model.attention_probs_dropout_prob: must be 0 (dropout off)")
  if config.model.dtype != "float32":
    raise InputError(f"model.dtype: must be float32, got {config.model.dtype!r}")
  config = ml_collections.ConfigDict(config.to_dict())
  config.num_train_steps = steps
  batches, tokenizer = read_batches(config, steps)
  seq = batches[0]["input_ids"].shape[1]
  cfg = job.bert_config(config, tokenizer["vocab_size"], seq)  # the model `flaxbert pretrain` builds
  recipes = {"adamw": dict(optimizer="adamw"), "bert_adam": dict(optimizer="bert_adam"),
             "accum": dict(optimizer="adamw", grad_accum_steps=accum)}
  runs = {}
  with tempfile.TemporaryDirectory(prefix="flaxbert-parity-") as tmp:
    initial = Path(tmp) / "initial"
    for key, fields in recipes.items():
      run_config = with_optim(config, **fields)
      log(f"flaxbert {key}: {steps} steps")
      runs["flaxbert", key] = train_flaxbert(run_config, cfg, batches, initial if key == "adamw" else None)
      log(f"torch {key}: {steps} steps")
      runs["torch", key] = train_torch(run_config, cfg, initial, batches)
    if float64_reference:
      log(f"torch adamw in float64: {steps} steps")
      runs["torch64", "adamw"] = train_torch(with_optim(config, **recipes["adamw"]), cfg, initial, batches,
                                             torch.float64)
  pairs = {key: (("flaxbert", key), ("torch", key)) for key in recipes}
  pairs.update(accum_vs_torch_batch=(("flaxbert", "accum"), ("torch", "adamw")),
               accum_vs_flaxbert_batch=(("flaxbert", "accum"), ("flaxbert", "adamw")))
  if float64_reference:
    pairs.update(flaxbert_vs_float64=(("flaxbert", "adamw"), ("torch64", "adamw")),
                 torch_vs_float64=(("torch", "adamw"), ("torch64", "adamw")))
  results = {name: compare(name, runs[a], runs[b], "_".join(a), "_".join(b), tolerance)
             for name, (a, b) in pairs.items()}
  pads = sum(int(((b["input_ids"] == tokenizer["pad_id"]) & (b["input_mask"] > 0)).sum()) for b in batches)
  return {"model": cfg.to_dict(), "batch": config.global_batch_size, "seq": seq, "grad_accum_steps": accum,
          "steps": steps, "tolerance": tolerance,
          "masked_per_micro_batch": [[int(w.sum()) for w in np.split(b["masked_lm_weights"], accum)] for b in batches],
          "pad_ids_at_real_positions": pads,  # where HF's padding_idx would drop the gradient (original_pad_gradient)
          "optim": optim.resolve(config.optim, steps).to_dict(), "comparisons": results}
