"""Settings for `flaxbert pretrain --config pretrain:ARG --workdir W [--config.key=value …]`.

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

from configs import common
from flaxbert.models.config import SIZES as SIZE_TABLE  # the one table of sizes

SIZES = tuple(SIZE_TABLE)
RENAMED = common.RENAMED


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.recipe = arg  # which preset this is (for the record)
  # --- model: the architecture and how it runs (configs/common.py) --------------------------------
  c.model = common.model(size=arg if arg in SIZES else "base", architecture=True)
  # --- data ------------------------------------------------------------------------------------
  c.dataset_dir = config_dict.placeholder(str)  # a folder written by `flaxbert prepare`
  c.global_batch_size = 256  # sequences per optimizer step, over all devices and hosts
  c.masked_lm_prob = 0.15  # dynamic-masking datasets only: masking rate (e.g. 0.3, MosaicBERT)
  c.max_predictions_per_seq = 20  # dynamic-masking datasets only: masked positions per sequence
  c.whole_word_mask = False  # dynamic-masking datasets only: mask whole words
  c.max_examples_per_row = 1  # dynamic masking without NSP: pack up to this many sequences into each
  #   max_seq_length row, each attending only to itself (flaxbert.training.packing; fewer padded tokens); 1: no packing
  c.seed = 0  # parameter init, data order, dropout and dynamic masks all derive from it
  # Multi-process launches (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, Slurm, Cloud
  # TPU) join with jax.distributed.initialize; false: stay one process whatever the environment says.
  c.distributed = True
  # Dropout's PRNG (flaxbert.training.state.RNG_IMPLS): threefry2x32 gives the same masks on any device
  # count (1-vs-8-device equality, resume on another mesh); rbg | unsafe_rbg draw masks with XLA's
  # RngBitGenerator, cheaper (bench/compare_train_step.py --rng_impl) but mesh-dependent.
  c.rng_impl = "threefry2x32"
  # --- schedule and optimizer (configs/common.py, flaxbert/training/optim.py) ------------------
  c.num_train_steps = 1_000_000  # optimizer steps in the whole run
  c.optim = common.optim(learning_rate=1e-4, warmup_steps=10_000)  # schedule length none: num_train_steps
  # --- parallelism, checkpoints (configs/common.py) ---------------------------------------------
  c.mesh = common.mesh()
  c.checkpoint = common.checkpoint(every_steps=1000, keep=3)
  # --- logging, evaluation, where to start ------------------------------------------------------
  c.log_every_steps = 100  # metrics pulled to the host, TensorBoard and console
  c.eval_every_steps = 10_000  # validation split; 0: only at the end
  c.eval_max_batches = 0  # 0: the whole validation split, exactly once
  # Where a fresh workdir starts (none: a fresh init): another pretraining run's workdir (its newest
  # checkpoint), or, for continued pretraining, a released model: a flaxbert export, an HF BERT folder
  # (BertForPreTraining, BertForMaskedLM or BertModel) or a TF1 checkpoint, whose architecture replaces
  # model.size (heads it lacks start fresh; its vocab.txt must be the dataset's, token for token).
  c.init_from = config_dict.placeholder(str)
  c.init_mode = "params"  # params: weights only, new optimizer and step 0 | full_state: continue a workdir's run

  if arg in SIZES:
    c.global_batch_size = 256 if arg in ("base", "large") else 128
    c.optim.learning_rate = 1e-4 if arg in ("base", "large") else 5e-4
  elif arg == "paper":
    _as_released(c)
    c.optim.num_train_steps = 1_000_000  # the schedule decays to 0 at 1M, as in the paper
    c.num_train_steps = 900_000  # phase 1 ends here; paper_phase2 continues the same schedule to 1M
  elif arg == "paper_phase2":
    _as_released(c)
    c.num_train_steps = 1_000_000
    c.optim.num_train_steps = 1_000_000
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
    c.checkpoint.every_steps = 300
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
