"""XLA's CPU matmul libraries on flaxbert's pretraining step, timed in one process, alternating.

  .venv/bin/python bench/cpu_matmul_libraries.py [--configs tiny:32,mini:32,small:32,base:8]
      [--rounds 3] [--steps 4] [--out bench/out/cpu_matmul_libraries.json]

XLA's CPU backend hands each matmul to a library: YNNPACK (its default in jax 0.10), Eigen, or
oneDNN. The choice is a compiler option (the debug options XLA_FLAGS also sets), so this compiles
`flaxbert.pretrain.job.jit_pretraining_step` once per library with jax's `compiler_options`, runs every
executable on its own copy of one initial state with the same batch (bench/compare_train_step.py's
synthetic batch, float32, seq 128, dropout on), and rotates which library goes first in each
round, so that the machine's drift hits all of them. Per configuration it writes the median step per library, its speed-up
over XLA's default, the first loss (equal up to float rounding) and how many fusions of each
library's kind the executable holds (that the option took effect).

flaxbert compiles with XLA's default: oneDNN's dot fusion is faster here but crashes jaxlib
0.10.2 (SIGILL after "partition compile failed") on the BERT2BERT training step and on as little
as `(a @ a) @ a`; docs/performance.md (the CPU comparison).
"""
import argparse
import collections
import json
import os
import re
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
import jaxlib  # noqa: E402
import ml_collections  # noqa: E402

from bench.compare_train_step import default_predictions, make_batch, optimizer_config, parse_configs, sync_jax  # noqa: E402
from flaxbert.models.config import BertConfig  # noqa: E402
from flaxbert.models.pretraining import build_model  # noqa: E402
from flaxbert.pretrain.job import jit_pretraining_step  # noqa: E402
from flaxbert.training import optim, sharding  # noqa: E402
from flaxbert.training.state import create_train_state  # noqa: E402

LIBRARIES = {
    "ynnpack": {},  # XLA's default
    # YNNPACK keeps the reductions; dots go to XLA's Eigen runtime (as XLA_FLAGS'
    # --xla_cpu_experimental_ynn_fusion_type=-individual_dot does)
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"},
    "onednn": {"xla_cpu_use_onednn": True, "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
}


def compare(size: str, batch: int, rounds: int, steps: int) -> dict:
  cfg = BertConfig.from_size(size, dtype="float32", max_position_embeddings=512)
  model = build_model(cfg)
  opt = optimizer_config(size)
  tx, schedule = optim.build_optimizer(opt), optim.learning_rate_schedule(opt)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)), jax.devices()[:1])
  ids = (jax.ShapeDtypeStruct((1, 8), jnp.int32),)
  states = {}
  for name in LIBRARIES:  # one copy of the same initial state each (the step donates its state)
    states[name], shardings = create_train_state(model, tx, mesh, sharding.DATA_PARALLEL, 0, ids)
  data = sharding.global_batch(make_batch(batch, 128, cfg.vocab_size, default_predictions(128), 0), mesh)
  lowered = jit_pretraining_step(model, tx, schedule, 1, True, shardings, mesh).lower(states["ynnpack"], data)
  row = {"size": size, "batch": batch, "seq": 128, "rounds": rounds, "steps_per_round": steps, "libraries": {}}
  compiled = {}
  for name, options in LIBRARIES.items():
    start = time.perf_counter()
    compiled[name] = lowered.compile(compiler_options=options)
    kinds = collections.Counter(re.findall(r'"kind":"(__\w+_fusion)"', compiled[name].as_text()))
    row["libraries"][name] = {"compiler_options": options, "compile_s": round(time.perf_counter() - start, 2),
                              "library_fusions": dict(kinds)}
  times = {name: [] for name in compiled}
  first = {}
  for name, step in compiled.items():  # the same first step from the same initial state
    states[name], metrics = step(states[name], data)
    sync_jax(states[name], metrics)
    first[name] = float(metrics["loss"])
  names = list(compiled)
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      for _ in range(steps):
        start = time.perf_counter()
        states[name], metrics = compiled[name](states[name], data)
        sync_jax(states[name], metrics)
        times[name].append(time.perf_counter() - start)
  default = statistics.median(times["ynnpack"])
  for name in names:
    median = statistics.median(times[name])
    row["libraries"][name].update(step_ms_median=round(1e3 * median, 1), seq_per_s=round(batch / median, 3),
                                  speedup_vs_ynnpack=round(default / median, 3), first_loss=round(first[name], 5))
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="tiny:32,mini:32,small:32,base:8", help="size:batch,...")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=4, help="timed steps per library per round")
  parser.add_argument("--out", type=Path, default=Path("bench/out/cpu_matmul_libraries.json"))
  args = parser.parse_args()
  if jax.default_backend() != "cpu":
    sys.exit(f"cpu_matmul_libraries: XLA's CPU options; jax's default backend is {jax.default_backend()}")
  results = []
  for size, batch in parse_configs(args.configs):
    results.append(compare(size, batch, args.rounds, args.steps))
    print(json.dumps(results[-1]), flush=True)
  report = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu_count": os.cpu_count(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": results}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print("| size | batch | " + " | ".join(f"{n} ms" for n in LIBRARIES) + " | eigen / onednn speed-up |")
  print("| --- | --- | " + " | ".join("---" for _ in LIBRARIES) + " | --- |")
  for row in results:
    lib = row["libraries"]
    print(f"| {row['size']} | {row['batch']} | " + " | ".join(str(lib[n]["step_ms_median"]) for n in LIBRARIES)
          + f" | {lib['eigen']['speedup_vs_ynnpack']}x / {lib['onednn']['speedup_vs_ynnpack']}x |")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
