"""Time to quality: BERT-mini pretrained by flaxbert and by transformers for the same wall-clock budget.

  .venv/bin/python bench/time_to_quality.py [--budget_minutes 60] [--seeds 0,1,2] [--sst2_train 8000]
      [--arms flaxbert,transformers,random] [--reference NAME=PATH,…] [--data ../shared/data]
      [--work /tmp/flaxbert_ttq]
      [--out bench/out/time_to_quality.json]
  smoke (about 10 min on a busy 2-core CPU): … --budget_minutes 0.5 --books 3 --seeds 0 --sst2_train 300
      --sst2_eval_limit 200 --wnut_train_limit 300 --wnut_eval_limit 200 --heldout_batches 2
      --calibration_steps 3 --work /tmp/ttq_smoke --out /tmp/ttq_smoke.json

Does a flaxbert pretraining run give a model as good as transformers' pretraining for the same
wall-clock budget, and better than a random init downstream?

Data. Pretraining text: the LitBank novels (all 100, or the first --books, in the original
one-sentence-per-line format of bench/prepare_litbank.py) plus WikiText-2 *valid*; held-out text:
WikiText-2 *test*. WikiText is written in the same format by `write_wikitext` (an article per
` = Title = ` line, headings dropped, paragraphs split into sentences, `<unk>` dropped and the
` @-@ ` / ` @,@ ` / ` @.@ ` number and hyphen splits joined). Both are prepared as `flaxbert prepare
--config prepare` does by default (the original create_pretraining_data.py: static masking, NSP
pairs, max_seq_length 128, 20 predictions, dupe_factor 10, seed 12345) with the uncased original
vocabulary, by bench/compare_training.py's `dataset` (reused while the settings are unchanged).
--masking dynamic (`--config prepare:dynamic`: unmasked, masked afresh each epoch by the input
pipeline) and --no-nsp (single segments, MLM only; the held-out text too, its masks still static)
change the pretraining data of both sides: the transformers side gets the same dynamically masked
batches from flaxbert's input pipeline and, on single segments, trains on the masked-LM loss alone.

Pretraining arms, one after the other (--pretrain_order), each in a budget of --budget_minutes:
  flaxbert      `flaxbert.pretrain.job.train_and_evaluate` with configs/pretrain.py:mini (batch 128,
                AdamW lr 5e-4, decay 0.01, clipping 1.0, dropout 0.1, float32; --batch_size,
                --learning_rate, --warmup_proportion and --pretrain_dropout change it for both
                sides), in this process
                with huge-page malloc as the `flaxbert` command runs;
  transformers  `transformers.BertForPreTraining` (its own init, or flaxbert's with --torch_init
                flaxbert) on the same batches in the same order (flaxbert's input pipeline, labels
                as bench/training_parity.py's `torch_inputs`), eager fp32 PyTorch on all cores,
                torch.optim.AdamW + LambdaLR as `training_parity.torch_optimizer` and
                `clip_grad_norm_`, in a child process with the default malloc (bench/torch_side.py
                says why).
Neither framework stops at a time, so each side (bench/budgeted_pretraining.py) first calibrates:
a --calibration_steps run gives its steady step time s and its fixed overhead o (start, compile,
final save); the run then gets num_train_steps = (budget − o) / s, so that the schedule's linear
warmup (the config's proportion, 10k of 1M steps, unless --warmup_proportion) and linear decay to 0
span the budget. A run that overruns is stopped at the budget (flaxbert: SIGTERM at the budget,
which its loop takes as a preemption: it saves and stops at the next step; torch: no step starts
after it). --pretrain_steps N instead trains each side N steps, however long they take: the same
training rather than the same wall clock. The JSON gives the planned and the trained steps, the
real wall time, tokens seen (positions and non-padding tokens, from the batches of the steps
trained) and the final train loss.

Evaluation. Masked-LM (and NSP) accuracy of both checkpoints on the held-out WikiText-2 test
dataset (by default one masking of the text: its first dupe pass, --heldout_batches), both run by
flaxbert's model and eval step (`pretrain.job.make_eval_step`/`evaluate`; the torch checkpoint
through flaxbert's HF import). Then every arm — the two checkpoints and `random` (a flaxbert init
of the same BERT-mini, saved as an HF folder: fine-tuning needs an `init`), and each --reference
checkpoint beside a random init of its architecture — is fine-tuned with one fixed recipe
(bench/compare_finetune.py's `task_files` and `make_config`; --finetune_lr, WNUT-17 --wnut_lr if
given; batch 32, dropout 0.1) on SST-2 (a seeded --sst2_train subset of train.tsv, dev
accuracy) and WNUT-17 (train → emerging.test.annotated, entity F1), once per --seeds seed, by
flaxbert's fine-tuning job.

Verdicts (in "verdicts"): the spread of an arm is the range (max − min) of its seed scores.
`flaxbert_beats_random[task]`: mean(flaxbert) − mean(random) > the larger of the two spreads;
`flaxbert_beats_or_equals_transformers[task]`: mean(flaxbert) − mean(transformers) ≥ −(the larger
spread), and MLM accuracy on the held-out text compared as a plain difference. With one seed the
spreads are 0. `reference_beats_its_random[NAME][task]`, the same test for each --reference
checkpoint (e.g. all-MiniLM-L6-v2) against a flaxbert init of its architecture: the control that the
fine-tuning recipe rewards a pretrained encoder at all. Everything is recorded whichever way it
comes out. Writes --out as it goes (results meant to be kept: copy to bench/results/).
"""
import argparse
import datetime
import itertools
import json
import math
import os
import platform
import re
import shutil
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if __name__ == "__main__":  # before jax: glibc reads its tunables at start
  from flaxbert.launch import reexec_with_hugepages  # noqa: E402
  reexec_with_hugepages()

import jax  # noqa: E402

from bench import compare_finetune, compare_training  # noqa: E402
from bench.budgeted_pretraining import flaxbert_side, pretraining_config, transformers_side  # noqa: E402
from bench.prepare_litbank import write_original_format  # noqa: E402
from configs import pretrain as pretrain_config  # noqa: E402
from flaxbert.finetune import job as finetune_job  # noqa: E402
from flaxbert.interop import pretrained  # noqa: E402
from flaxbert.models.pretraining import build_model, init_params  # noqa: E402
from flaxbert.pretrain import job as pretrain_job  # noqa: E402
from flaxbert.pretrain.input_pipeline import PretrainingData  # noqa: E402
from flaxbert.text.sentences import split_sentences  # noqa: E402
from flaxbert.training import sharding  # noqa: E402

ARMS = ("flaxbert", "transformers", "random")
TASKS = {"sst2": "accuracy", "wnut17": "f1"}  # the score each task is judged by
_TITLE = re.compile(r"= [^=].* =")  # a WikiText article's first line (sections are "= = … = =")


# --- corpora -----------------------------------------------------------------------------------


def write_wikitext(source: Path, path: Path) -> int:
  """WikiText-2 (tokenized v1) in the original one-sentence-per-line format; the number of articles."""
  docs: list[list[str]] = []
  for line in source.read_text(encoding="utf-8").splitlines():
    text = line.strip()
    if _TITLE.fullmatch(text):
      docs.append([])
    elif text and not text.startswith("=") and docs:
      text = " ".join(re.sub(r" @(.)@ ", r"\1", text).replace("<unk>", " ").split())
      docs[-1].extend(s for s in split_sentences(text) if s.strip())
  docs = [d for d in docs if d]
  path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
  return len(docs)


def prepared(inputs: list[Path], work: Path, args, masking: str = "static") -> Path:
  """The dataset of `inputs` as `flaxbert prepare --config prepare` writes it (compare_training.dataset),
  with --no-nsp's single segments; the original settings in `work`, others in a folder named for them."""
  suffix = ("" if masking == "static" else f"_{masking}") + ("" if args.nsp else "_nonsp")
  return compare_training.dataset(types.SimpleNamespace(data=inputs, vocab=args.vocab, max_seq_length=128,
                                                        work=work.with_name(work.name + suffix)), masking, args.nsp)


# --- evaluation --------------------------------------------------------------------------------


def random_init(args, dataset: Path, out: Path) -> Path:
  """A fresh flaxbert init of the pretraining arms' BERT as an HF folder (with vocab.txt)."""
  info = json.loads((dataset / "metadata.json").read_text())
  cfg = pretrain_job.bert_config(pretraining_config(args, dataset, 1), info["tokenizer"]["vocab_size"], 128)
  model = build_model(cfg)
  return pretrained.save_pretrained(out, model, init_params(model, args.pretrain_seed), format="hf",
                                    vocab=args.vocab, overwrite=True)


def reference_arms(spec: str, work: Path, seed: int) -> dict[str, str]:
  """--reference NAME=PATH,…: per item, NAME (that checkpoint as it is) and NAME_random (a flaxbert
  init of the same architecture, with its vocabulary), both fine-tuned as the other arms are."""
  arms, pairs, taken = {}, [], set(ARMS)
  for item in (i for i in spec.split(",") if i):
    name, sep, path = item.partition("=")
    if not sep or not name or not path or {name, f"{name}_random"} & taken:
      raise SystemExit(f"--reference: {item!r} is not NAME=PATH with a new NAME (taken: {sorted(taken)})")
    taken |= {name, f"{name}_random"}
    pairs.append((name, path))
  for name, path in pairs:  # every name checked before anything is loaded
    loaded = pretrained.load(path)
    model = loaded.model
    arms[name] = path
    arms[f"{name}_random"] = str(pretrained.save_pretrained(
        work / f"{name}_random_init", model, init_params(model, seed), format="hf", vocab=loaded.vocab,
        overwrite=True))
  return arms


def tokens_seen(dataset: Path, batch: int, seed: int, steps: dict[str, int]) -> dict:
  """Per arm: sequence positions and non-padding tokens of the batches of its `steps` steps."""
  data = PretrainingData(dataset, "train", global_batch_size=batch, seed=seed)
  counts, stream = [0], data.iterate(0)
  for _ in range(max(steps.values(), default=0)):
    counts.append(counts[-1] + int(next(stream)["input_mask"].sum()))
  stream.close()
  return {arm: {"positions": n * batch * data.max_seq_length, "tokens": counts[n]} for arm, n in steps.items()}


def heldout_metrics(checkpoint: str, heldout: Path, args) -> dict:
  """MLM/NSP loss and accuracy of a checkpoint (flaxbert workdir or HF folder) on the held-out
  dataset, its train then its validation split, in stored order: the first --heldout_batches
  batches; 0: every example (all dupe passes); -1: one masking of the text (the first dupe pass of
  its one chunk: the first 1/dupe_factor of the train split, 61 of WikiText-2 test's 62 articles)."""
  loaded = pretrained.load(checkpoint)
  mesh = sharding.make_mesh(pretrain_config.get_config(args.size).mesh, jax.devices()[:1])
  eval_step = jax.jit(pretrain_job.make_eval_step(loaded.model, nsp=args.nsp))
  splits = [PretrainingData(heldout, s, global_batch_size=args.batch_size, seed=0) for s in ("train", "validation")]
  data = types.SimpleNamespace(eval_batches=lambda: itertools.chain.from_iterable(d.eval_batches() for d in splits))
  batches = args.heldout_batches
  if batches < 0:
    dupe = splits[0].builder.info.metadata["settings"]["dupe_factor"]
    batches = math.ceil(splits[0].num_examples / dupe / args.batch_size)
  start = time.perf_counter()
  scores = pretrain_job.evaluate(eval_step, loaded.params, data, mesh, batches)
  return {**scores, "batches": batches or "all", "seconds": time.perf_counter() - start}


def head_lines(src: Path, dst: Path, n: int, header: int = 0, blocks: bool = False) -> Path:
  """The first `n` lines after `header` header lines (blocks: blank-line-separated blocks) of src."""
  lines = src.read_text(encoding="utf-8").splitlines()
  if blocks:
    groups = [list(g) for blank, g in itertools.groupby(lines, lambda line: not line.strip()) if not blank]
    dst.write_text("\n\n".join("\n".join(g) for g in groups[:n]) + "\n", encoding="utf-8")
  else:
    dst.write_text("\n".join(lines[:header + n]) + "\n", encoding="utf-8")
  return dst


def finetune_tasks(args, work: Path) -> dict:
  """Per task: compare_finetune.task_files' overrides, cut to the --*_limit sizes."""
  files = types.SimpleNamespace(data_seed=args.data_seed, sst2_train=args.sst2_train, epochs=args.sst2_epochs,
                                ner_max_seq_length=128, ner_epochs=args.wnut_epochs)
  out = {}
  for name in TASKS:
    folder = work / "finetune" / name
    o = compare_finetune.task_files(name, args.data, folder, files)
    if name == "sst2" and args.sst2_eval_limit:
      o["eval_path"] = str(head_lines(Path(o["eval_path"]), folder / "dev.tsv", args.sst2_eval_limit, header=1))
    if name == "wnut17" and args.wnut_train_limit:
      o["train_path"] = str(head_lines(Path(o["train_path"]), folder / "train.conll", args.wnut_train_limit,
                                       blocks=True))
    if name == "wnut17" and args.wnut_eval_limit:
      o["eval_path"] = str(head_lines(Path(o["eval_path"]), folder / "eval.conll", args.wnut_eval_limit, blocks=True))
    out[name] = o
  return out


def finetune(args, name: str, overrides: dict, arm: str, init: str, seed: int, work: Path) -> dict:
  lr = args.wnut_lr if name == "wnut17" and args.wnut_lr is not None else args.finetune_lr
  recipe = types.SimpleNamespace(model=init, batch_size=32, learning_rate=lr, dropout=0.1)
  config = compare_finetune.make_config(overrides, recipe, seed)
  workdir = work / "finetune" / name / arm / str(seed)
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.perf_counter()
  scores = finetune_job.train_and_evaluate(config, workdir)
  return {"scores": {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))},
          "seconds": time.perf_counter() - start}


def spread(summary: dict) -> float:
  return summary["max"] - summary["min"]


def compared(a: dict, b: dict, metric: str, holds) -> dict:
  """Arm a against arm b (their seed summaries): the difference of means, the larger spread, and
  whether holds(difference, spread)."""
  d, s = a["mean"] - b["mean"], max(spread(a), spread(b))
  return {"holds": bool(holds(d, s)), "difference_of_means": d, "larger_spread": s, "metric": metric}


def verdicts(report: dict) -> dict:
  out = {"flaxbert_beats_random": {}, "flaxbert_beats_or_equals_transformers": {},
         "reference_beats_its_random": {}}
  beats, equals = (lambda d, s: d > s), (lambda d, s: d >= -s)
  for name, metric in TASKS.items():
    arms = {arm: r["summary"][metric] for arm, r in report["finetune"].get(name, {}).items() if r.get("summary")}
    for other, key, holds in (("random", "flaxbert_beats_random", beats),
                              ("transformers", "flaxbert_beats_or_equals_transformers", equals)):
      if "flaxbert" in arms and other in arms:
        out[key][name] = compared(arms["flaxbert"], arms[other], metric, holds)
    for ref in sorted(a for a in arms if f"{a}_random" in arms):  # the recipe's control: does it reward pretraining?
      out["reference_beats_its_random"].setdefault(ref, {})[name] = compared(arms[ref], arms[f"{ref}_random"],
                                                                            metric, beats)
  mlm = report.get("heldout", {})
  if "flaxbert" in mlm and "transformers" in mlm:
    d = mlm["flaxbert"]["mlm_accuracy"] - mlm["transformers"]["mlm_accuracy"]
    out["flaxbert_beats_or_equals_transformers"]["heldout_mlm_accuracy"] = {"holds": bool(d >= 0), "difference": d}
  for key in ("flaxbert_beats_random", "flaxbert_beats_or_equals_transformers"):
    found = [v["holds"] for v in out[key].values()]
    out[key]["all"] = bool(found) and all(found)
  return out


# --- the benchmark -----------------------------------------------------------------------------


def arguments() -> argparse.ArgumentParser:
  """The bench's options; parse_args([]) gives its default recipe (word_embedding_drift.py uses it)."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--budget_minutes", type=float, default=60.0, help="each pretraining side's wall-clock budget")
  parser.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (head init, batch order, dropout)")
  parser.add_argument("--sst2_train", type=int, default=8000, help="SST-2 training sentences (seeded subset)")
  parser.add_argument("--arms", default=",".join(ARMS), help="of flaxbert,transformers,random")
  parser.add_argument("--reference", default="",
                      help="NAME=PATH,…: fine-tune these checkpoints too, each beside a random init of its "
                           "architecture (NAME_random): the control that the recipe rewards a pretrained encoder")
  parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder as ../shared/data")
  parser.add_argument("--vocab", type=Path, default=None, help="default: DATA/bert-vocab/bert-base-uncased-vocab.txt")
  parser.add_argument("--work", type=Path, default=Path("/tmp/flaxbert_ttq"))
  parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "time_to_quality.json")
  parser.add_argument("--size", default="mini", help="configs/pretrain.py model size")
  parser.add_argument("--batch_size", type=int, default=None, help="pretraining batch (default: the size's recipe)")
  parser.add_argument("--learning_rate", type=float, default=None,
                      help="pretraining peak lr, both sides (default: the size's recipe)")
  parser.add_argument("--warmup_proportion", type=float, default=None, help="default: the recipe's 10k/1M")
  parser.add_argument("--pretrain_dropout", type=float, default=None,
                      help="hidden and attention dropout while pretraining, both sides (default: the recipe's 0.1; "
                      "fine-tuning keeps 0.1)")
  parser.add_argument("--masking", choices=("static", "dynamic"), default="static",
                      help="pretraining data: the original's stored masks, or masks drawn afresh each epoch")
  parser.add_argument("--nsp", action=argparse.BooleanOptionalAction, default=True,
                      help="sentence pairs with next-sentence prediction (--no-nsp: single segments, MLM only)")
  parser.add_argument("--pretrain_steps", type=int, default=0,
                      help="train each side this many steps instead of for --budget_minutes (0: the budget)")
  parser.add_argument("--pretrain_seed", type=int, default=0)
  parser.add_argument("--pretrain_order", default="flaxbert,transformers")
  parser.add_argument("--torch_init", choices=("hf", "flaxbert"), default="hf",
                      help="hf: transformers' own init (as its users get); flaxbert: the random arm's weights")
  parser.add_argument("--calibration_steps", type=int, default=10)
  parser.add_argument("--books", type=int, default=0, help="only the first N LitBank books (0: all)")
  parser.add_argument("--heldout_batches", type=int, default=-1,
                      help="held-out eval batches (-1: one masking of the text; 0: all dupe passes)")
  parser.add_argument("--data_seed", type=int, default=0, help="the SST-2 subset's seed")
  parser.add_argument("--finetune_lr", type=float, default=1e-4)
  parser.add_argument("--wnut_lr", type=float, default=None, help="WNUT-17's fine-tuning lr (default: --finetune_lr)")
  parser.add_argument("--sst2_epochs", type=float, default=2.0)
  parser.add_argument("--wnut_epochs", type=float, default=3.0)
  parser.add_argument("--sst2_eval_limit", type=int, default=0, help="first N dev sentences (0: all)")
  parser.add_argument("--wnut_train_limit", type=int, default=0, help="first N training sentences (0: all)")
  parser.add_argument("--wnut_eval_limit", type=int, default=0, help="first N test sentences (0: all)")
  return parser


def main() -> None:
  args = arguments().parse_args()
  arms = [a for a in args.arms.split(",") if a]
  if set(arms) - set(ARMS):
    raise SystemExit(f"--arms: unknown {sorted(set(arms) - set(ARMS))}; expected some of {ARMS}")
  args.vocab = args.vocab or args.data / "bert-vocab" / "bert-base-uncased-vocab.txt"
  args.batch_size = args.batch_size or pretrain_config.get_config(args.size).global_batch_size
  work = args.work
  (work / "corpus").mkdir(parents=True, exist_ok=True)
  references = reference_arms(args.reference, work, args.pretrain_seed)
  t0 = time.perf_counter()
  report = {"date": datetime.date.today().isoformat(), "command": "bench/time_to_quality.py " + " ".join(sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
                        "device": jax.devices()[0].device_kind},
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "pretraining": {}, "heldout": {}, "finetune": {}}

  def save() -> None:
    report["verdicts"] = verdicts(report)
    report["total_seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")

  litbank, valid, test = work / "corpus" / "litbank.txt", work / "corpus" / "wikitext_valid.txt", work / "heldout.txt"
  books = write_original_format(args.data / "litbank-gutenberg-novels", litbank, args.books)
  corpus = {"litbank_books": books,
            "wikitext_valid_articles": write_wikitext(args.data / "wikitext-2-v1-valid-test" / "valid.txt", valid),
            "wikitext_test_articles": write_wikitext(args.data / "wikitext-2-v1-valid-test" / "test.txt", test)}
  dataset = prepared([litbank, valid], work / "pretrain", args, args.masking)
  heldout = prepared([test], work / "heldout", args)  # static: the same masks for every checkpoint
  for key, d in (("pretraining", dataset), ("heldout", heldout)):
    info = json.loads((d / "dataset_info.json").read_text())
    corpus[f"{key}_examples"] = {s["name"]: sum(int(n) for n in s["shardLengths"]) for s in info["splits"]}
  report["data"] = corpus
  initial = random_init(args, dataset, work / "random_init")
  checkpoints = {"random": str(initial), **references}

  for side in args.pretrain_order.split(","):
    if side not in arms or side == "random":
      continue
    print(f"pretraining: {side}, " + (f"{args.pretrain_steps} steps" if args.pretrain_steps
                                       else f"{args.budget_minutes} min"), flush=True)
    r = (flaxbert_side(args, dataset, work) if side == "flaxbert"
         else transformers_side(args, dataset, work, initial))
    report["pretraining"][side] = r
    checkpoints[side] = r["checkpoint"]
    save()
  steps = {side: r["steps"] for side, r in report["pretraining"].items()}
  for side, seen in tokens_seen(dataset, args.batch_size, args.pretrain_seed, steps).items():
    report["pretraining"][side]["seen"] = seen
  for side in report["pretraining"]:
    report["heldout"][side] = heldout_metrics(checkpoints[side], heldout, args)
    print(f"held-out {side}: {json.dumps(report['heldout'][side])}", flush=True)
  save()

  seeds = [int(s) for s in args.seeds.split(",")]
  for name, overrides in finetune_tasks(args, work).items():
    for arm in arms + list(references):
      runs = report["finetune"].setdefault(name, {}).setdefault(arm, {"seeds": {}})
      for seed in seeds:
        runs["seeds"][str(seed)] = r = finetune(args, name, overrides, arm, checkpoints[arm], seed, work)
        runs["summary"] = compare_finetune.summary(runs["seeds"])
        print(f"{name} {arm} seed {seed}: {json.dumps(r['scores'])} {r['seconds']:.0f} s", flush=True)
        save()
  save()
  print(json.dumps({"pretraining": {k: {f: v.get(f) for f in ("steps", "wall_seconds", "seen")}
                                    for k, v in report["pretraining"].items()},
                    "heldout": report["heldout"], "verdicts": report["verdicts"]}, indent=2, default=float))


if __name__ == "__main__":
  main()
