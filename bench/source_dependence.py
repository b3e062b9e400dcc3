"""Does an encoder-decoder read its source? Teacher-forced test loss (mean NLL per target token,
no label smoothing) of translation workdirs with the right sources and with the sources shuffled
across examples: a model that ignores its source scores the same on both.

  python bench/source_dependence.py --pairs 'test.en.gz|test.de.gz' W1 W2 … [--limit 512]

Writes bench/out/source_dependence.json: {workdir: {"real": …, "shuffled": …, "gap": …}}.
"""
import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flaxbert.finetune.job import restore  # noqa: E402
from flaxbert.finetune.tasks import parallel  # noqa: E402
from flaxbert.finetune.tasks.readers import ReadReport  # noqa: E402


def mean_nll(task, model, params, arrays: dict, order: np.ndarray, batch_size: int = 64) -> float:
  step = jax.jit(lambda p, b: task.loss_sums(model, p, b, None))  # token_nll_sum: no label smoothing
  total = count = 0.0
  for i in range(0, len(order), batch_size):
    batch = {k: v[i:i + batch_size] for k, v in arrays.items()}
    rows = order[i:i + batch_size]
    batch["source_ids"], batch["source_mask"] = arrays["source_ids"][rows], arrays["source_mask"][rows]
    batch["example_mask"] = np.ones(len(rows), np.int32)
    sums = step(params, batch)
    total, count = total + float(sums["token_nll_sum"]), count + float(sums["token_count"])
  return total / count


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--pairs", required=True, help="SRC|TGT (or .tsv / .jsonl) test pairs")
  parser.add_argument("--limit", type=int, default=512, help="pairs used (the first N)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "source_dependence.json"))
  args = parser.parse_args()
  examples = parallel.read_spec(args.pairs)[:args.limit]
  report = {}
  for workdir in args.workdirs:
    task, session, params = restore(workdir)
    task.config.label_smoothing = 0.0  # the loss's smoothing term; the NLL reported does not use it
    arrays = task.bundle(session).pairs(examples, ReadReport(args.pairs))
    n = len(arrays["labels"])
    real = mean_nll(task, session.model, params, arrays, np.arange(n))
    shuffled = mean_nll(task, session.model, params, arrays, np.random.default_rng(args.seed).permutation(n))
    report[workdir] = {"pairs": n, "real": real, "shuffled": shuffled, "gap": shuffled - real}
    print(f"{workdir}: NLL real {real:.3f}, shuffled sources {shuffled:.3f} (gap {shuffled - real:.3f})")
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
