"""Profile flaxbert's pretraining step: where the device's time goes, and how much of the step it is busy.

  python bench/profile_step.py [--size base] [--batch 256] [--seq 128] [--dtype bfloat16]
      [--steps 10] [--attention_dropout P] [--rng_impl threefry2x32] [--remat_policy none]
      [--scan_layers] [--trace_dir bench/out/profile] [--out bench/out/profile_step.json] [--top 25]
      [--hlo_out bench/out/step_hlo.txt.gz]

Builds the same jitted, donated step as bench/compare_train_step.py (`FlaxSide`), runs a few
warm-up steps, then --steps synchronised steps under `jax.profiler.trace`, and reads the trace
back with `jax.profiler.ProfileData` (no TensorBoard needed). It reports

  step_ms          wall time per step (median, under the profiler)
  device_busy_ms   per step, the union of the device's kernel intervals on all its streams: a step
                   much longer than this is waiting on the host (dispatch, launches, syncs)
  top ops          device time per step by kernel / XLA op name, the largest first

On a GPU the kernels are on the "/device:GPU:0" plane, grouped by the XLA op each names; on a
CPU the XLA ops run on the host's threads, which are reported instead (they overlap, so their
kernel sum can exceed the busy time). The trace (an .xplane.pb, which TensorBoard's profile
plugin also opens) stays under --trace_dir; --hlo_out writes the compiled step's optimised HLO
(gzip), to see which kernels and library calls (cuBLAS, cuDNN) XLA chose.
"""
import argparse
import collections
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # before jax: glibc reads its malloc tunables at process start
  from flaxbert.launch import reexec_with_hugepages  # noqa: E402
  reexec_with_hugepages()

import jax  # noqa: E402

from bench.compare_train_step import (  # noqa: E402
    add_single_run_arguments, default_predictions, FlaxSide, make_batch)
from flaxbert.models.config import BertConfig  # noqa: E402


# CPU trace events that wrap or wait for the ops rather than being one.
SKIPPED = ("ThreadpoolListener", "ThunkExecutor", "SlinkyThreadPool")


def device_lines(profile) -> list:
  """The trace lines holding device work: a GPU's streams, else a CPU's XLA client threads."""
  gpu = [line for plane in profile.planes if plane.name.startswith("/device:GPU")
         for line in plane.lines if "stream" in line.name.lower()]
  if gpu:
    return gpu
  return [line for plane in profile.planes if plane.name == "/host:CPU"
          for line in plane.lines if line.name != "python"]


def busy_ns(intervals: list[tuple[float, float]]) -> float:
  """Length of the union of [start, end) intervals."""
  total, end = 0.0, float("-inf")
  for s, e in sorted(intervals):
    if e > end:
      total += e - max(s, end)
      end = e
  return total


def summarize(trace_dir: Path, steps: int, top: int) -> dict:
  path = sorted(trace_dir.glob("**/*.xplane.pb"), key=lambda p: p.stat().st_mtime)[-1]
  profile = jax.profiler.ProfileData.from_file(str(path))
  by_op: dict[str, float] = collections.Counter()
  kernel_of: dict[str, str] = {}
  intervals = []
  for line in device_lines(profile):
    for event in line.events:
      if event.duration_ns <= 0 or event.name.startswith(SKIPPED):
        continue
      op = dict(event.stats).get("hlo_op") or event.name  # a GPU kernel names its XLA op in a stat
      by_op[op] += event.duration_ns
      kernel_of.setdefault(op, event.name)
      intervals.append((event.start_ns, event.start_ns + event.duration_ns))
  total = sum(by_op.values())
  return {"xplane": str(path), "device_busy_ms": round(busy_ns(intervals) / 1e6 / steps, 3),
          "device_kernel_sum_ms": round(total / 1e6 / steps, 3),
          "top_ops": [{"op": op, "kernel": kernel_of[op][:160], "ms_per_step": round(t / 1e6 / steps, 3),
                       "share": round(t / total, 4) if total else 0.0}
                      for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_single_run_arguments(parser, steps=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--attention_dropout", type=float, default=None)
  parser.add_argument("--rng_impl", default="threefry2x32")
  parser.add_argument("--remat_policy", default="none")
  parser.add_argument("--scan_layers", action="store_true")
  parser.add_argument("--trace_dir", type=Path, default=Path("bench/out/profile"))
  parser.add_argument("--out", type=Path, default=Path("bench/out/profile_step.json"))
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--hlo_out", type=Path, default=None, help="write the compiled step's HLO here (gzip)")
  args = parser.parse_args()
  predictions = default_predictions(args.seq)
  overrides = {} if args.attention_dropout is None else {"attention_probs_dropout_prob": args.attention_dropout}
  cfg = BertConfig.from_size(args.size, dtype=args.dtype, max_position_embeddings=max(512, args.seq), **overrides)
  side = FlaxSide(cfg, args.size, make_batch(args.batch, args.seq, cfg.vocab_size, predictions, 0), args.seq, args)
  if args.hlo_out:
    args.hlo_out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.hlo_out, "wt") as f:
      f.write(side.step.as_text())
  side.run(args.warmup)
  with jax.profiler.trace(str(args.trace_dir)):
    times, loss = side.run(args.steps)
  step_ms = 1e3 * statistics.median(times)
  device = jax.devices()[0]
  report = {"device_kind": device.device_kind, "jax": jax.__version__, "size": args.size, "batch": args.batch,
            "seq": args.seq, "dtype": args.dtype, "attention_dropout": cfg.attention_probs_dropout_prob,
            "rng_impl": args.rng_impl, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "init_s": round(side.init_s, 2), "compile_s": round(side.compile_s, 2),
            "step_ms": round(step_ms, 3), "step_ms_each": [round(1e3 * t, 2) for t in times], "loss": round(loss, 4),
            **summarize(args.trace_dir, args.steps, args.top), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(f"{device.device_kind}: {args.size} batch {args.batch} seq {args.seq} {args.dtype}; step "
        f"{report['step_ms']:.1f} ms, device busy {report['device_busy_ms']:.1f} ms "
        f"(kernel sum {report['device_kernel_sum_ms']:.1f} ms); init {report['init_s']} s, "
        f"compile {report['compile_s']} s")
  for op in report["top_ops"]:
    print(f"  {op['ms_per_step']:9.3f} ms  {100 * op['share']:5.1f}%  {op['op']}"
          + (f"  [{op['kernel'][:90]}]" if op["kernel"] != op["op"] else ""))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
