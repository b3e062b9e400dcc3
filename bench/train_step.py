"""Benchmark flaxbert's pretraining step (forward, MLM+NSP loss, backward, AdamW) on synthetic batches.

  .venv/bin/python bench/train_step.py [--sizes tiny:32,mini:32,small:32,base:8] [--seq 128]
      [--dtype float32|bfloat16] [--steps 20] [--out bench/out/train_step.json]

Writes JSON per configuration: sequences/s and tokens/s (median of timed steps), MFU against the
device's peak (vendor table, or a matmul measured in the same run on CPU), compile time and time
to the first step, and peak memory (device memory stats where the backend has them, else the
process's peak RSS). Batches are random ids with 20 masked positions, as the original's
max_predictions_per_seq; compare figures only within one run (this machine varies 10-20%).
"""
import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before jax: glibc reads its malloc tunables at process start
  from flaxbert.launch import reexec_with_hugepages  # noqa: E402
  reexec_with_hugepages()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import pretrain as pretrain_config  # noqa: E402
from flaxbert.models.config import BertConfig  # noqa: E402
from flaxbert.models.pretraining import BertForPreTraining  # noqa: E402
from flaxbert.pretrain.job import jit_pretraining_step  # noqa: E402
from flaxbert.training import flops, optim, sharding  # noqa: E402
from flaxbert.training.state import create_train_state  # noqa: E402


def synthetic_batch(batch: int, seq: int, vocab: int, predictions: int, seed: int = 0) -> dict:
  rng = np.random.RandomState(seed)
  positions = np.sort(np.stack([rng.choice(np.arange(1, seq - 1), predictions, replace=False) for _ in range(batch)]), 1)
  return {"input_ids": rng.randint(5, vocab, (batch, seq)).astype(np.int32),
          "input_mask": np.ones((batch, seq), np.int32),
          "segment_ids": (np.arange(seq)[None] >= seq // 2).astype(np.int32).repeat(batch, 0),
          "masked_lm_positions": positions.astype(np.int32),
          "masked_lm_ids": rng.randint(5, vocab, (batch, predictions)).astype(np.int32),
          "masked_lm_weights": np.ones((batch, predictions), np.float32),
          "next_sentence_labels": rng.randint(0, 2, batch).astype(np.int32)}


def bench_one(size: str, batch: int, seq: int, dtype: str, steps: int, peak: float) -> dict:
  cfg = BertConfig.from_size(size, dtype=dtype)
  model = BertForPreTraining(cfg)
  opt = pretrain_config.get_config(size).optim
  opt.warmup_steps = 10
  opt = optim.resolve(opt, 1000)
  tx, schedule = optim.build_optimizer(opt), optim.learning_rate_schedule(opt)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)), jax.devices()[:1])
  state, shardings = create_train_state(model, tx, mesh, sharding.DATA_PARALLEL, 0,
                                        (jax.ShapeDtypeStruct((1, seq), jnp.int32),))
  step = jit_pretraining_step(model, tx, schedule, 1, True, shardings, mesh)
  data = sharding.global_batch(synthetic_batch(batch, seq, cfg.vocab_size, 20), mesh)
  start = time.perf_counter()
  compiled = step.lower(state, data).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  state, m = compiled(state, data)
  jax.block_until_ready(m["loss"])
  first_s = time.perf_counter() - start + compile_s
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, m = compiled(state, data)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  step_flops = flops.bert_flops_per_sequence(cfg, seq, 20) * batch
  stats = jax.devices()[0].memory_stats() or {}
  return {"size": size, "batch": batch, "seq": seq, "dtype": dtype, "steps_timed": steps,
          "seq_per_s": round(batch / step_s, 2), "tokens_per_s": round(batch * seq / step_s, 1),
          "step_ms_median": round(1000 * step_s, 2), "mfu": round(step_flops / step_s / peak, 4),
          "compile_s": round(compile_s, 2), "time_to_first_step_s": round(first_s, 2),
          "peak_memory_gb": round((stats.get("peak_bytes_in_use") or
                                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30, 3),
          "final_loss": float(m["loss"])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="tiny:32,mini:32,small:32,base:8")
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--out", type=Path, default=Path("bench/out/train_step.json"))
  args = parser.parse_args()
  device = jax.devices()[0]
  peak = flops.peak_flops(device.device_kind, args.dtype)
  measured = peak is None
  if measured:
    peak = flops.measure_matmul_peak(args.dtype, size=2048, seconds=3.0)
  results = []
  for item in args.sizes.split(","):
    size, batch = item.split(":")
    results.append(bench_one(size, int(batch), args.seq, args.dtype, args.steps, peak))
    print(json.dumps(results[-1]), flush=True)
  report = {"device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
            "peak_flops": peak, "peak_measured_here": measured, "results": results}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  jnp.zeros(())  # initialise the backend before timing anything
  main()
