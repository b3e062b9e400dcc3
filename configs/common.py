"""The config sections every job shares, defined once: model, optim, mesh, checkpoint.

configs/pretrain.py and configs/finetune.py build their configs from these; a field means the
same thing wherever it appears.
"""
import ml_collections
from ml_collections import config_dict

from flaxbert.training.sharding import DATA_PARALLEL

# Fields of earlier versions, by their new names: a command line that still uses an old one gets a
# one-line error naming the new one (flaxbert.config_flags).
RENAMED = {
    "learning_rate": "optim.learning_rate", "warmup_proportion": "optim.warmup_proportion",
    "optimizer": "optim.optimizer", "weight_decay": "optim.weight_decay", "adam_b1": "optim.adam_b1",
    "adam_b2": "optim.adam_b2", "adam_eps": "optim.adam_eps", "max_grad_norm": "optim.max_grad_norm",
    "dropout": "model.hidden_dropout_prob and model.attention_probs_dropout_prob", "dtype": "model.dtype",
    "model_size": "model.size", "sharding_rules": "mesh.sharding_rules",
    "checkpoint_every_steps": "checkpoint.every_steps", "keep_checkpoints": "checkpoint.keep",
}


def model(*, size: str | None = None, architecture: bool = False,
          encoder_runs: bool = True) -> ml_collections.ConfigDict:
  """How the model is built and run. architecture: also the fields that define a new model (a
  job that builds one from scratch, pretraining); fine-tuning takes them from its checkpoint.
  encoder_runs: the BERT encoder's remat_policy and scan_layers (models built on BertModel)."""
  m = ml_collections.ConfigDict()
  if size is not None:
    m.size = size  # named size (tiny | mini | small | medium | base | large) of a model built from scratch
  if architecture:
    m.hidden_act = "gelu"  # gelu (exact) | gelu_tanh (the original TF code's) | relu | silu
    m.max_position_embeddings = 512  # learned positions (phase 2 uses all 512)
  m.hidden_dropout_prob = 0.1  # dropout on embeddings, sublayer outputs (and a task head's input)
  m.attention_probs_dropout_prob = 0.1  # dropout on attention probabilities
  m.dtype = "float32"  # compute dtype: float32 | bfloat16 (params and optimizer state stay float32)
  if not encoder_runs:
    return m
  # Rematerialisation of each encoder layer in the backward pass (flaxbert.models.encoder.REMAT_POLICIES):
  # none (keep all activations) | full (keep only layer inputs, recompute the layer) | dots (keep the
  # projection matmuls' outputs, recompute attention matrices and elementwise ops). Same parameters.
  m.remat_policy = "none"
  # Run the encoder as one lax.scan over its layers' stacked parameters instead of unrolled: compile
  # time and program size independent of depth (large models, TPU pods), same parameters and results.
  m.scan_layers = False
  return m


def optim(*, learning_rate: float, warmup_steps: int | None = None,
          warmup_proportion: float | None = None) -> ml_collections.ConfigDict:
  """The optimizer and schedule (flaxbert.training.optim). Set exactly one of warmup_steps and
  warmup_proportion; the other is none."""
  o = ml_collections.ConfigDict()
  o.optimizer = "adamw"  # adamw | bert_adam (the original, no bias correction) | lamb
  o.learning_rate = learning_rate  # peak learning rate
  o.warmup_steps = config_dict.placeholder(int)  # linear warmup from 0 over this many steps …
  o.warmup_steps = warmup_steps
  o.warmup_proportion = config_dict.placeholder(float)  # … or over this share of the schedule
  o.warmup_proportion = warmup_proportion
  o.num_train_steps = config_dict.placeholder(int)  # the schedule's length (linear decay to 0 there); none: the run's
  o.schedule = "linear"  # linear decay after warmup | constant
  o.weight_decay = 0.01  # decoupled; not on LayerNorm parameters or biases
  o.adam_b1 = 0.9  # first-moment decay
  o.adam_b2 = 0.999  # second-moment decay
  o.adam_eps = 1e-6  # as the original BERT (HF Trainer uses 1e-8)
  o.max_grad_norm = 1.0  # global-norm clipping before the moments; 0 disables
  o.grad_accum_steps = 1  # micro-batches per optimizer step; the gradient equals the whole batch's
  return o


def mesh() -> ml_collections.ConfigDict:
  """The device mesh and where parameters and batches go on it (flaxbert.training.sharding)."""
  m = ml_collections.ConfigDict()
  m.data = -1  # data-parallel axis size; -1: all devices the other axes leave
  m.fsdp = 1  # parameter/optimizer-state sharding axis (FSDP)
  m.model = 1  # tensor-parallel axis
  # logical axis → mesh axes; a preset's name (data_parallel | fsdp | tensor_parallel) or a literal
  m.sharding_rules = DATA_PARALLEL
  return m


def checkpoint(*, every_steps: int, keep: int) -> ml_collections.ConfigDict:
  """Orbax checkpoints under WORKDIR/checkpoints (flaxbert.training.checkpoint)."""
  c = ml_collections.ConfigDict()
  c.every_steps = every_steps  # also saved at the end and on SIGTERM/SIGINT
  c.keep = keep  # newest kept (≥ 1); older ones deleted by Orbax after a newer one is complete
  # Resuming with settings that differ from the ones the workdir's checkpoints were trained with
  # (seed, batch, data, schedule…) is refused; list the fields to accept anyway, comma-separated,
  # e.g. "num_train_steps,optim.learning_rate" (flaxbert.training.run_record).
  c.resume_changes = ""
  return c
