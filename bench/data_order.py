"""What choosing a step's examples costs: the O(batch) keyed order against a whole-epoch permutation.

  .venv/bin/python bench/data_order.py [--batch 256] [--rows 1e9] [--step 1e6] [--train_step base:8]
      [--out bench/results/data_order.json]

Times, in one run: flaxbert.pretrain.order.epoch_rows for the global batch at step --step of a
--rows-row dataset (what PretrainingData does per step now); the per-step cost of drawing the
whole epoch's permutation instead (what it did before), at 10^6 and 10^7 rows (10^9 needs 8 GB
and is not attempted); and, for scale, the pretraining train step of --train_step SIZE:BATCH
(seq 128) on one device of this machine (bench/train_step.py's measurement). Medians.
"""
import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from flaxbert.pretrain.order import epoch_rows  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--rows", type=float, default=1e9)
  parser.add_argument("--step", type=float, default=1e6)
  parser.add_argument("--train_step", default="base:8", help="SIZE:BATCH of the train step timed for scale; '' skips")
  parser.add_argument("--out", default="bench/results/data_order.json")
  args = parser.parse_args()
  rows, step, batch = int(args.rows), int(args.step), args.batch
  per_epoch = rows // batch
  epoch, position = divmod(step, per_epoch)
  positions = np.arange(position * batch, (position + 1) * batch)
  keyed_s = median_seconds(lambda: epoch_rows(positions, rows, 0, epoch), 50)
  whole = {f"{n:.0e}": median_seconds(lambda n=n: np.random.default_rng([0, 0]).permutation(n)[:batch], 3)
           for n in (10 ** 6, 10 ** 7)}
  result = {"date": datetime.date.today().isoformat(), "batch": batch, "rows": rows, "step": step,
            "keyed_order_s_per_step": keyed_s, "whole_epoch_permutation_s_per_step": whole,
            "whole_1e7_over_keyed_1e9": whole["1e+07"] / keyed_s}
  if args.train_step:
    from train_step import bench_one  # pylint: disable=import-outside-toplevel
    from flaxbert.training import flops  # pylint: disable=import-outside-toplevel
    size, train_batch = args.train_step.split(":")
    measured = bench_one(size, int(train_batch), 128, "float32", 3, flops.measure_matmul_peak("float32"))
    result["train_step"] = {k: measured[k] for k in ("size", "batch", "seq", "step_ms_median")}
    result["keyed_order_over_train_step"] = keyed_s / (measured["step_ms_median"] / 1000)
  result["command"] = (f"bench/data_order.py --batch {batch} --rows {args.rows:g} --step {args.step:g} "
                       f"--train_step '{args.train_step}'")
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
