"""flaxbert vs transformers (PyTorch) BertForPreTraining: the same training, step for step.

  .venv/bin/python bench/compare_training.py --data TEXT [TEXT …] --vocab VOCAB.txt
      [--steps 200] [--size mini] [--batch 32] [--accum 4] [--max_seq_length 128]
      [--warmup_steps 20] [--learning_rate LR] [--seed 0] [--tolerance 1e-4] [--float64_reference]
      [--work bench/out/compare_training] [--out bench/results/compare_training.json]

A dataset is prepared from the text with `flaxbert prepare --config prepare` (the original
create_pretraining_data.py settings: static masking, NSP pairs) into WORK/data, reused while its
settings are the same. flaxbert builds one initial BERT of --size (float32, dropout off; the
model `flaxbert pretrain --config pretrain:SIZE` builds), exports it to transformers'
BertForPreTraining, and both sides train from it on the same batches (flaxbert's input pipeline,
--batch sequences a step) for --steps steps with the pretrain config's optimizer section (AdamW,
decay 0.01 not on LayerNorm/bias, eps 1e-6, clipping at global norm 1.0), a linear warmup over
--warmup_steps and linear decay to 0 at --steps (bench/training_parity.py has the two training
loops and says what each side runs). Three comparisons:

  adamw      flaxbert's adamw vs torch.optim.AdamW + LambdaLR + clip_grad_norm_
  bert_adam  flaxbert's bert_adam vs the original AdamWeightDecayOptimizer as a torch optimizer
  accum      --accum micro-batches of batch/accum per step (optim.grad_accum_steps) on both
             sides, and flaxbert's accumulated run against both sides' --batch runs of "adamw"
  float64    (--float64_reference) both AdamW runs against the torch one in float64: how far each
             float32 run is from the same training without float32 rounding

Every step's total, MLM and NSP loss and the final weights (max over tensors of ‖Δ‖/‖w‖) must
agree within --tolerance relative. Writes --out (per-step losses of both sides, the maxima, the
final weight difference) and exits 1 if a comparison is outside the tolerance.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from bench import training_parity  # noqa: E402
from configs import prepare as prepare_config  # noqa: E402
from configs import pretrain as pretrain_config  # noqa: E402
from data_prep.builder import prepare  # noqa: E402
from flaxbert.errors import InputError  # noqa: E402
from flaxbert.models.config import SIZES  # noqa: E402


def dataset(args, masking: str = "static", nsp: bool = True) -> Path:
  """WORK/data prepared from --data with `flaxbert prepare --config prepare` (masking "static": the
  original; "dynamic": `--config prepare:dynamic`; nsp=False: single segments); kept while the
  settings that define it are unchanged (rebuilt, atomically, when they are not)."""
  c = prepare_config.get_config("dynamic" if masking == "dynamic" else "original")
  c.random_next_sentence = nsp
  c.input, c.vocab = tuple(str(Path(p).resolve()) for p in args.data), str(Path(args.vocab).resolve())
  c.max_seq_length, c.output_dir = args.max_seq_length, str(args.work / "data")
  metadata = Path(c.output_dir) / "metadata.json"
  if metadata.is_file():
    settings = json.loads(metadata.read_text())["settings"]
    same = lambda k, v: k in ("overwrite", "num_workers", "output_dir") or settings.get(k) == (  # noqa: E731
        list(v) if isinstance(v, tuple) else v)
    if all(same(k, v) for k, v in c.to_dict().items()):
      print(f"reusing {c.output_dir}", flush=True)
      return Path(c.output_dir)
  c.overwrite = True
  print(f"preparing {c.output_dir}", flush=True)
  return prepare(c)[0]


def pretraining_config(args, data: Path):
  """configs/pretrain.py:SIZE on the dataset, dropout off, the schedule of this run."""
  c = pretrain_config.get_config(args.size)
  c.dataset_dir, c.global_batch_size, c.seed = str(data), args.batch, args.seed
  c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = 0.0
  c.model.dtype = "float32"
  c.optim.warmup_steps = args.warmup_steps if args.warmup_steps is not None else args.steps // 10
  if args.learning_rate is not None:
    c.optim.learning_rate = args.learning_rate
  return c


def summary(results: dict) -> str:
  head = ("comparison", "total loss", "MLM loss", "NSP loss", "final weights", "key bias / query bias", "within")
  rows = []
  for r in results["comparisons"].values():
    figures = [f"{r[k]['max_relative_difference']:.2e}" for k in training_parity.PARTS]
    rows.append((f"{r['sides'][0]} vs {r['sides'][1]}", *figures, f"{r['final_params_max_relative_difference']:.2e}",
                 f"{max(r['key_bias_over_query_bias'].values()):.1e}", "yes" if r["within_tolerance"] else "NO"))
  return "\n".join("| " + " | ".join(row) + " |" for row in [head, ("---",) * len(head)] + rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", nargs="+", required=True, help="text files or folders (flaxbert prepare --input)")
  parser.add_argument("--vocab", required=True, help="vocab.txt (flaxbert prepare --vocab)")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--size", default="mini", choices=sorted(SIZES))
  parser.add_argument("--batch", type=int, default=32, help="sequences per optimizer step")
  parser.add_argument("--accum", type=int, default=4, help="micro-batches per step in the accumulation comparison")
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--warmup_steps", type=int, default=None, help="default: steps // 10")
  parser.add_argument("--learning_rate", type=float, default=None, help="default: the size's (configs/pretrain.py)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tolerance", type=float, default=1e-4)
  parser.add_argument("--float64_reference", action="store_true",
                      help="also train the torch side in float64 with AdamW, and compare both float32 runs with it")
  parser.add_argument("--work", type=Path, default=Path("bench/out/compare_training"))
  parser.add_argument("--out", type=Path, default=Path("bench/results/compare_training.json"))
  args = parser.parse_args()
  if args.steps < 1 or args.batch < 1 or args.accum < 2 or args.batch % args.accum:
    raise InputError(f"--steps, --batch, --accum: expected steps >= 1 and accum >= 2 dividing batch, got "
                     f"{args.steps}, {args.batch}, {args.accum}")
  start = time.time()
  data = dataset(args)
  results = training_parity.run_all(pretraining_config(args, data), args.steps, args.accum, args.tolerance,
                                    args.float64_reference, log=lambda m: print(m, flush=True))
  report = {"command": " ".join(["python", *sys.argv]), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "dataset": str(data), "data": args.data, "vocab": args.vocab, "size": args.size,
            "versions": {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "device": jax.devices()[0].device_kind, **results}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=1) + "\n")
  print(summary(results))
  print(f"wrote {args.out} ({time.time() - start:.0f} s)")
  if not all(r["within_tolerance"] for r in results["comparisons"].values()):
    sys.exit(1)


if __name__ == "__main__":
  try:
    main()
  except InputError as e:
    raise SystemExit(f"compare_training.py: {e}") from None
