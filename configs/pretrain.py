"""Settings for `flaxbert pretrain --config configs/pretrain.py:ARG --workdir W [--config.key=value …]`.

ARG: a model size (tiny | mini | small | medium | base | large), or a recipe:
  paper          BERT-Base as Devlin et al. 2018 trained it, phase 1: batch 256, Adam lr 1e-4 with
                 10k warmup steps and linear decay over 1M steps, weight decay 0.01, dropout 0.1,
                 and, as the released code has them, Adam without bias correction (bert_adam) and
                 the tanh GELU;
                 the first 900k steps at sequence length 128 (a dataset prepared at 128);
  paper_phase2   the last 100k steps at length 512 (a dataset prepared at 512), continuing the
                 phase-1 run's full state (step, optimizer, schedule) from `init_from`;
  mlperf_phase2  MLPerf-style BERT-Large phase 2: seq 512, 76 predictions, LAMB, from phase-1
                 parameters only;
  demo           BERT-tiny for `make demo` on a CPU.
"""
import ml_collections
from ml_collections import config_dict

SIZES = ("tiny", "mini", "small", "medium", "base", "large")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.recipe = arg  # which preset this is (for the record)
  # --- model -----------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.size = arg if arg in SIZES else "base"  # named size (flaxbert.config.SIZES)
  c.model.hidden_act = "gelu"  # gelu (exact) | gelu_tanh (the original TF code's) | relu | silu
  c.model.hidden_dropout_prob = 0.1  # dropout on embeddings and sublayer outputs
  c.model.attention_probs_dropout_prob = 0.1  # dropout on attention probabilities
  c.model.max_position_embeddings = 512  # learned positions (phase 2 uses all 512)
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
  # Rematerialisation of each encoder layer in the backward pass (flaxbert.model.REMAT_POLICIES):
  # none (keep all activations) | full (keep only layer inputs, recompute the layer) | dots (keep the
  # projection matmuls' outputs, recompute attention matrices and elementwise ops). Same parameters.
  c.model.remat_policy = "none"
  # Run the encoder as one lax.scan over its layers' stacked parameters instead of unrolled: compile
  # time and program size independent of depth (large models, TPU pods), same parameters and results.
  c.model.scan_layers = False
  # --- data ------------------------------------------------------------------------------------
  c.dataset_dir = config_dict.placeholder(str)  # a folder written by `flaxbert prepare`
  c.global_batch_size = 256  # sequences per optimizer step, over all devices and hosts
  c.masked_lm_prob = 0.15  # dynamic-masking datasets only: masking rate (e.g. 0.3, MosaicBERT)
  c.max_predictions_per_seq = 20  # dynamic-masking datasets only: masked positions per sequence
  c.whole_word_mask = False  # dynamic-masking datasets only: mask whole words
  c.max_examples_per_row = 1  # dynamic masking without NSP: pack up to this many sequences into each
  #   max_seq_length row, each attending only to itself (flaxbert.packing; fewer padded tokens); 1: no packing
  c.seed = 0  # parameter init, data order, dropout and dynamic masks all derive from it
  # Dropout's PRNG (flaxbert.train.RNG_IMPLS): threefry2x32 gives the same masks on any device
  # count (1-vs-8-device equality, resume on another mesh); rbg | unsafe_rbg draw masks with XLA's
  # RngBitGenerator, cheaper (bench/compare_train_step.py --rng_impl) but mesh-dependent.
  c.rng_impl = "threefry2x32"
  # --- schedule and optimizer (flaxbert/optim.py) ----------------------------------------------
  c.num_train_steps = 1_000_000  # optimizer steps in the whole run
  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = "adamw"  # adamw | bert_adam (the original, no bias correction) | lamb
  c.optim.learning_rate = 1e-4  # peak learning rate
  c.optim.warmup_steps = 10_000  # linear warmup from 0
  c.optim.num_train_steps = c.get_ref("num_train_steps")  # the schedule decays to 0 here
  c.optim.schedule = "linear"  # linear decay after warmup | constant
  c.optim.weight_decay = 0.01  # decoupled; not on LayerNorm parameters or biases
  c.optim.adam_b1 = 0.9  # first-moment decay
  c.optim.adam_b2 = 0.999  # second-moment decay
  c.optim.adam_eps = 1e-6  # as the original BERT
  c.optim.max_grad_norm = 1.0  # global-norm clipping before the moments; 0 disables
  c.optim.grad_accum_steps = 1  # optimizer sees batch sums of this many micro-batches (train_step)
  # --- parallelism (flaxbert/sharding.py) -------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel axis size; -1: all devices the other axes leave
  c.mesh.fsdp = 1  # parameter/optimizer-state sharding axis (FSDP)
  c.mesh.model = 1  # tensor-parallel axis
  c.sharding_rules = (("batch", ("data", "fsdp")),)  # logical axis → mesh axes; see sharding.py presets
  # --- checkpoints, logging, evaluation --------------------------------------------------------
  c.checkpoint_every_steps = 1000  # also saved at the end and on SIGTERM/SIGINT
  c.keep_checkpoints = 3  # newest kept; older ones deleted by Orbax after a newer one is complete
  c.log_every_steps = 100  # metrics pulled to the host, TensorBoard and console
  c.eval_every_steps = 10_000  # validation split; 0: only at the end
  c.eval_max_batches = 0  # 0: the whole validation split, exactly once
  c.init_from = config_dict.placeholder(str)  # start from another run (workdir) or any checkpoint
  c.init_mode = "params"  # params: weights only, new optimizer and step 0 | full_state: continue it

  if arg in SIZES:
    c.global_batch_size = 256 if arg in ("base", "large") else 128
    c.optim.learning_rate = 1e-4 if arg in ("base", "large") else 5e-4
  elif arg == "paper":
    _as_released(c)
    del c.optim["num_train_steps"]  # unlinked from num_train_steps (assigning would set both)
    c.optim.num_train_steps = 1_000_000  # the schedule decays to 0 at 1M, as in the paper
    c.num_train_steps = 900_000  # phase 1 ends here; paper_phase2 continues the same schedule to 1M
  elif arg == "paper_phase2":
    _as_released(c)
    c.num_train_steps = 1_000_000
    c.init_mode = "full_state"
  elif arg == "mlperf_phase2":
    c.model.size = "large"
    c.global_batch_size = 448
    c.max_predictions_per_seq = 76
    c.num_train_steps = 7_100
    c.optim.optimizer = "lamb"
    c.optim.learning_rate = 4e-4
    c.optim.warmup_steps = 0
    c.optim.adam_b2 = 0.999
    c.optim.weight_decay = 0.01
    c.init_mode = "params"
  elif arg == "demo":
    c.model.size = "tiny"
    c.global_batch_size = 32
    c.num_train_steps = 1200
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    c.checkpoint_every_steps = 300
    c.log_every_steps = 50
    c.eval_every_steps = 400
  else:
    raise ValueError(f"configs/pretrain.py: unknown argument {arg!r}; expected one of {SIZES} or "
                     "paper, paper_phase2, mlperf_phase2, demo")
  return c


def _as_released(c: ml_collections.ConfigDict) -> None:
  """What the released code (run_pretraining.py) trains with beyond the paper's text: Adam without
  bias correction (its AdamWeightDecayOptimizer) and the tanh approximation of the GELU."""
  c.optim.optimizer = "bert_adam"
  c.model.hidden_act = "gelu_tanh"
