"""flaxbert vs transformers (PyTorch) BertForPreTraining: the full pretraining step, in one process.

  .venv/bin/python bench/compare_train_step.py [--configs tiny:32,mini:32,small:32,base:8]
      [--seq 128] [--dtype float32|bfloat16] [--device cpu|cuda] [--rounds 5] [--steps 10]
      [--predictions 0] [--attention_dropout P] [--remat_policy none] [--scan_layers]
      [--rng_impl threefry2x32]
      [--out bench/out/compare_train_step.json]

Each side runs forward, the MLM loss at the masked positions + the NSP loss, backward and an AdamW
step (decay 0.01, not on LayerNorm/bias; eps 1e-6; global-norm clipping at 1.0; linear warmup) in
training mode with dropout 0.1, on the same batch: random ids, rows padded to random lengths in
[seq/2, seq] (the same padding mask on both sides), `predictions` masked positions per row inside
its length (flaxbert: masked_lm_positions/ids/weights; torch: `labels` = -100 everywhere except
those positions, as HF's data collators do) and random `next_sentence_label`s. flaxbert is
`flaxbert.pretrain.job.jit_pretraining_step` (the step as `flaxbert pretrain` compiles it) with the
donated state of `create_train_state` (as bench/train_step.py); torch is `BertForPreTraining`
(its default attention, sdpa) with torch.optim.AdamW, eager, `torch.set_num_threads(os.cpu_count())`.

Timing alternates: `rounds` rounds of `steps` steps per side, the side going first alternating per
round, so that drift of a shared machine hits both; every step is synchronised (jax:
block_until_ready; torch: cuda.synchronize on GPU) and the median step time is reported. Both
sides compute the same model and loss, but transformers computes MLM logits at every position
while flaxbert gathers the masked ones first (as the original BERT): MFU uses the model FLOPs at
the masked positions (`flops.bert_flops_per_sequence`) for both sides, so it compares
implementations; `torch_hfu` counts torch's all-position head as work done.

Peak FLOP/s: a `--peak_size`² matmul in the run's dtype on jax's default device is measured here
(`flops.measure_matmul_peak`); MFU is against the vendor figure where flaxbert.training.flops knows
the chip (float32 on a GPU counts as TF32, which jax's and, set here, torch's default use), else
against the measured one. bfloat16 means bf16 compute with float32 master weights on both sides
(flaxbert's BertConfig.dtype; torch.autocast). `--device cuda` puts torch on the GPU and requires
jax's default backend to be the GPU too.

Each side runs as its users run it: flaxbert in this process, which as a script first re-executes
itself with glibc's malloc asking for transparent huge pages (`flaxbert.launch`, as the `flaxbert`
command does; FLAXBERT_MALLOC_HUGEPAGES=0 turns it off), torch in a child process with the
environment without that setting (bench/torch_side.py; in one process the huge pages made torch's
steps slower), driven round by round so that the alternation is unchanged. The JSON records both.
"""
import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

# Both frameworks share the GPU: jax must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before jax: glibc reads its malloc tunables at process start
  from flaxbert.launch import reexec_with_hugepages  # noqa: E402
  reexec_with_hugepages()

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlib  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench.torch_side import TorchWorker  # noqa: E402
from configs import pretrain as pretrain_config  # noqa: E402
from flaxbert.errors import InputError  # noqa: E402
from flaxbert.models.config import SIZES, BertConfig  # noqa: E402
from flaxbert.models.encoder import check_remat_policy  # noqa: E402
from flaxbert.models.pretraining import build_model  # noqa: E402
from flaxbert.pretrain.job import jit_pretraining_step  # noqa: E402
from flaxbert.training import flops, optim, sharding  # noqa: E402
from flaxbert.training.state import check_rng_impl, create_train_state  # noqa: E402


def parse_configs(text: str) -> list[tuple[str, int]]:
  """"tiny:32,base:8" → [("tiny", 32), ("base", 8)]; InputError naming --configs otherwise."""
  out = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    size, _, batch = item.partition(":")
    if size not in SIZES or not batch.isdigit() or int(batch) < 1:
      raise InputError(f"--configs: expected SIZE:BATCH items with SIZE in {sorted(SIZES)}, got {item!r}")
    out.append((size, int(batch)))
  if not out:
    raise InputError("--configs: expected at least one SIZE:BATCH item")
  return out


def make_batch(batch: int, seq: int, vocab: int, predictions: int, seed: int) -> dict[str, np.ndarray]:
  """One synthetic pretraining batch in flaxbert's layout (padding, masked positions, NSP labels)."""
  rng = np.random.RandomState(seed)
  lengths = rng.randint(max(predictions + 2, seq // 2), seq + 1, batch)
  mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
  positions = np.stack([np.sort(rng.choice(np.arange(1, n - 1), predictions, replace=False)) for n in lengths])
  return {"input_ids": (rng.randint(5, vocab, (batch, seq)) * mask).astype(np.int32),
          "input_mask": mask,
          "segment_ids": ((np.arange(seq)[None] >= lengths[:, None] // 2) * mask).astype(np.int32),
          "masked_lm_positions": positions.astype(np.int32),
          "masked_lm_ids": rng.randint(5, vocab, (batch, predictions)).astype(np.int32),
          "masked_lm_weights": np.ones((batch, predictions), np.float32),
          "next_sentence_labels": rng.randint(0, 2, batch).astype(np.int32)}


def default_predictions(seq: int) -> int:
  """Masked positions per sequence: 20 up to seq 128 (the original's), else ceil(0.15·seq)."""
  return 20 if seq <= 128 else math.ceil(0.15 * seq)


def add_single_run_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
  """--size --batch --seq --dtype --steps of the one-configuration GPU scripts (step_ablation,
  profile_step): base, batch 256, seq 128, bfloat16 by default."""
  parser.add_argument("--size", default="base", choices=sorted(SIZES))
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  parser.add_argument("--steps", type=int, default=steps, help="timed steps")


def optimizer_config(size: str) -> ml_collections.ConfigDict:
  opt = pretrain_config.get_config(size).optim
  opt.warmup_steps = 100
  opt = optim.resolve(opt, 10_000)
  return opt


def sync_jax(state, step_metrics) -> None:
  jax.block_until_ready((state.step, step_metrics["loss"]))


class FlaxSide:
  """flaxbert's jitted, donated pretraining step on one device; times compile and the first step."""

  def __init__(self, cfg: BertConfig, size: str, data: dict, seq: int, args):
    model = build_model(cfg, remat_policy=args.remat_policy, scan_layers=args.scan_layers)
    opt = optimizer_config(size)
    tx, schedule = optim.build_optimizer(opt), optim.learning_rate_schedule(opt)
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)), jax.devices()[:1])
    start = time.perf_counter()
    # The parameters do not depend on the sequence length: one init shape for every --seq lets a
    # compilation cache (JAX_COMPILATION_CACHE_DIR, as bench/gpu.sh sets) share the init's program.
    self.state, shardings = create_train_state(model, tx, mesh, sharding.DATA_PARALLEL, 0,
                                               (jax.ShapeDtypeStruct((1, 8), jnp.int32),), rng_impl=args.rng_impl)
    jax.block_until_ready(self.state)
    self.init_s = time.perf_counter() - start
    self.params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(self.state.params))
    step = jit_pretraining_step(model, tx, schedule, 1, True, shardings, mesh)
    self.data = sharding.global_batch(data, mesh)
    start = time.perf_counter()
    self.step = step.lower(self.state, self.data).compile()
    self.compile_s = time.perf_counter() - start
    start = time.perf_counter()
    self.first_loss = self.run(1)[1]
    self.time_to_first_step_s = self.compile_s + time.perf_counter() - start

  def run(self, steps: int) -> tuple[list[float], float]:
    times, step_metrics = [], None
    for _ in range(steps):
      start = time.perf_counter()
      self.state, step_metrics = self.step(self.state, self.data)
      sync_jax(self.state, step_metrics)
      times.append(time.perf_counter() - start)
    return times, float(step_metrics["loss"])


def bert_config(size: str, dtype: str, seq: int, attention_dropout: float | None) -> BertConfig:
  """The configuration both sides build: `size`, in `dtype`, positions for `seq`."""
  overrides = {} if attention_dropout is None else {"attention_probs_dropout_prob": attention_dropout}
  return BertConfig.from_size(size, dtype=dtype, max_position_embeddings=max(512, seq), **overrides)


def compare_one(size: str, batch: int, args, peak: float, measured_peak: float) -> dict:
  cfg = bert_config(size, args.dtype, args.seq, args.attention_dropout)
  data = make_batch(batch, args.seq, cfg.vocab_size, args.predictions, args.seed)
  torch_side = TorchWorker(size, batch, args)  # first: its process starts while flaxbert compiles
  flax_side = FlaxSide(cfg, size, data, args.seq, args)
  torch_side.wait_ready()
  sides = {"flaxbert": flax_side, "torch": torch_side}
  for side in sides.values():
    side.run(args.warmup)
  times: dict[str, list[float]] = {name: [] for name in sides}
  round_medians: dict[str, list[float]] = {name: [] for name in sides}
  losses = {}
  for r in range(args.rounds):
    for name in (("flaxbert", "torch") if r % 2 == 0 else ("torch", "flaxbert")):
      step_times, losses[name] = sides[name].run(args.steps)
      times[name] += step_times
      round_medians[name].append(round(1000 * statistics.median(step_times), 2))
  step_s = {name: statistics.median(t) for name, t in times.items()}
  model_flops = flops.bert_flops_per_sequence(cfg, args.seq, args.predictions) * batch
  torch_flops = flops.bert_flops_per_sequence(cfg, args.seq, None) * batch  # MLM logits at all T
  mfu = lambda count, s, p: round(flops.mfu(count, s, p, 1), 4)  # noqa: E731
  result = {
      "size": size, "batch": batch, "seq": args.seq, "predictions": args.predictions, "dtype": args.dtype,
      "attention_dropout": cfg.attention_probs_dropout_prob,
      "rounds": args.rounds, "steps_per_round": args.steps,
      "flaxbert_seq_per_s": round(batch / step_s["flaxbert"], 3),
      "torch_seq_per_s": round(batch / step_s["torch"], 3),
      "ratio_flaxbert_over_torch": round(step_s["torch"] / step_s["flaxbert"], 3),
      "flaxbert_step_ms_median": round(1000 * step_s["flaxbert"], 2),
      "torch_step_ms_median": round(1000 * step_s["torch"], 2),
      "round_medians_ms": round_medians,
      "model_flops_per_step": model_flops,
      "flaxbert_mfu": mfu(model_flops, step_s["flaxbert"], peak),
      "torch_mfu": mfu(model_flops, step_s["torch"], peak),
      "torch_hfu": mfu(torch_flops, step_s["torch"], peak),
      "flaxbert_mfu_vs_measured_peak": mfu(model_flops, step_s["flaxbert"], measured_peak),
      "flaxbert_init_s": round(flax_side.init_s, 2),
      "flaxbert_compile_s": round(flax_side.compile_s, 2),
      "flaxbert_time_to_first_step_s": round(flax_side.time_to_first_step_s, 2),
      "torch_time_to_first_step_s": round(torch_side.time_to_first_step_s, 2),
      "params": {"flaxbert": flax_side.params, "torch": torch_side.params},
      "first_loss": {"flaxbert": round(flax_side.first_loss, 4), "torch": round(torch_side.first_loss, 4)},
      "final_loss": {k: round(v, 4) for k, v in losses.items()},
      "torch_attn_implementation": torch_side.attn_implementation,
      "torch_process": torch_side.process_info,
      "flaxbert_remat_policy": args.remat_policy,
      "flaxbert_rng_impl": args.rng_impl,
      "flaxbert_scan_layers": args.scan_layers,
  }
  torch_side.close()
  del flax_side, torch_side, sides
  gc.collect()
  return result


def check_devices(device: str) -> None:
  """--device must agree with jax's default backend: both on the GPU or both on the CPU."""
  backend = jax.default_backend()
  if device not in ("cpu", "cuda"):
    raise InputError(f"--device: expected cpu or cuda, got {device!r}")
  if device == "cuda" and not torch.cuda.is_available():
    raise InputError("--device cuda: torch sees no CUDA device (a CPU-only torch build?)")
  if (device == "cuda") != (backend == "gpu"):
    raise InputError(f"--device {device}: jax's default backend is {backend!r}; run both frameworks on the "
                     "same kind of device (JAX_PLATFORMS=cpu for a CPU run, jax's CUDA plugin for a GPU run)")


def table(results: list[dict]) -> str:
  head = ("size", "batch", "seq", "dtype", "attn dropout", "flaxbert seq/s", "torch seq/s", "ratio",
          "flaxbert MFU", "torch MFU", "flaxbert MFU (measured peak)", "compile s", "first step s")
  rows = [(r["size"], r["batch"], r["seq"], r["dtype"], r["attention_dropout"], f"{r['flaxbert_seq_per_s']:.2f}",
           f"{r['torch_seq_per_s']:.2f}", f"{r['ratio_flaxbert_over_torch']:.2f}x",
           f"{100 * r['flaxbert_mfu']:.1f}%", f"{100 * r['torch_mfu']:.1f}%",
           f"{100 * r['flaxbert_mfu_vs_measured_peak']:.1f}%", f"{r['flaxbert_compile_s']:.1f}",
           f"{r['flaxbert_time_to_first_step_s']:.1f}") for r in results]
  lines = ["| " + " | ".join(map(str, row)) + " |" for row in [head, ("---",) * len(head)] + rows]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="tiny:32,mini:32,small:32,base:8", help="SIZE:BATCH,…")
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--device", default="cpu", help="torch's device: cpu | cuda (jax: its default device)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=10, help="timed steps per side per round")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side after the first")
  parser.add_argument("--predictions", type=int, default=0,
                      help="masked positions per sequence; 0: 20 up to seq 128 (the original's), else ceil(0.15·seq)")
  parser.add_argument("--attention_dropout", type=float, default=None,
                      help="both sides' attention_probs_dropout_prob (default: the size's, 0.1); 0 as in "
                           "MosaicBERT/cramming lets flaxbert use cuDNN flash attention on a GPU")
  parser.add_argument("--remat_policy", default="none", help="flaxbert side: none | full | dots")
  parser.add_argument("--scan_layers", action="store_true", help="flaxbert side: lax.scan over the encoder layers")
  parser.add_argument("--rng_impl", default="threefry2x32", help="flaxbert side's dropout PRNG: threefry2x32 | rbg | unsafe_rbg")
  parser.add_argument("--peak_size", type=int, default=0, help="matmul size for the peak; 0: 2048 CPU, 8192 GPU")
  parser.add_argument("--peak_seconds", type=float, default=3.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", type=Path, default=Path("bench/out/compare_train_step.json"))
  args = parser.parse_args()
  configs = parse_configs(args.configs)
  check_devices(args.device)
  check_remat_policy(args.remat_policy, "--remat_policy")
  check_rng_impl(args.rng_impl, "--rng_impl")
  if args.attention_dropout is not None and not 0.0 <= args.attention_dropout < 1.0:
    raise InputError(f"--attention_dropout: expected a probability in [0, 1), got {args.attention_dropout}")
  if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
    raise InputError(f"--rounds, --steps, --warmup: expected >= 1, >= 1, >= 0; got {args.rounds}, "
                     f"{args.steps}, {args.warmup}")
  args.predictions = args.predictions or default_predictions(args.seq)
  if not 1 <= args.predictions <= args.seq - 2:
    raise InputError(f"--predictions: expected 1 … seq - 2 = {args.seq - 2}, got {args.predictions}")
  device = jax.devices()[0]
  gpu = device.platform == "gpu"
  measured = flops.measure_matmul_peak(args.dtype, size=args.peak_size or (8192 if gpu else 2048),
                                         seconds=args.peak_seconds)
  vendor = flops.peak_flops(device.device_kind, "tensorfloat32" if gpu and args.dtype == "float32" else args.dtype)
  peak = vendor or measured
  results = []
  for size, batch in configs:
    results.append(compare_one(size, batch, args, peak, measured))
    print(json.dumps(results[-1]), flush=True)
  report = {
      "device_kind": device.device_kind, "platform": device.platform, "torch_device": args.device,
      "torch_device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
      "cpu_count": os.cpu_count(), "flaxbert_glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                   "torch": torch.__version__, "transformers": transformers.__version__},
      "peak_flops": peak, "peak_source": "vendor" if vendor else "measured", "measured_peak_flops": measured,
      "vendor_peak_flops": vendor, "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": results}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(f"\n{device.device_kind} ({device.platform}); torch on {report['torch_device_name']} in its own "
        f"process, {results[-1]['torch_process']['threads']} threads; peak {peak / 1e12:.3f} TFLOP/s "
        f"({report['peak_source']}; measured {measured / 1e12:.3f})")
  print(table(results))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  jnp.zeros(())  # initialise the backend before timing anything
  try:
    main()
  except InputError as e:
    raise SystemExit(f"compare_train_step.py: {e}") from None
