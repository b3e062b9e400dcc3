"""What does short pretraining do to the word embeddings of words its corpus barely has, and does
that cost fine-tuning? A diagnostic for the time-to-quality bench (docs/time_to_quality.md).

  .venv/bin/python bench/word_embedding_drift.py --init W/random_init \\
      --models flaxbert=W/pretrain_flaxbert[,transformers=W/pretrain_transformers] \\
      --corpus W/corpus/litbank.txt,W/corpus/wikitext_valid.txt --task W/finetune/sst2/train.tsv \\
      [--graft flaxbert --seeds 0,1,2] [--out bench/out/word_embedding_drift.json]

W is a `bench/time_to_quality.py --work` folder: --init its random arm (the weights flaxbert's
pretraining started from), --corpus the text it pretrained on, --task the SST-2 subset it fine-tunes
on. Every model shares --init's vocabulary. The token types of --task's first column are put into
buckets by how often the corpus has them (--buckets), and per model and bucket the report gives
  norm             the mean length of their word-embedding rows;
  shared_share     |mean row|^2 / mean |row|^2: the share of their squared length that is one vector
                   common to the whole bucket (about 1/types for independent random rows);
  init_cosine      the mean cosine between a row less that common vector and the row at --init
                   (1: the row's own part is still its init).
With --graft NAME, the model NAME is fine-tuned on SST-2 with the bench's recipe (its `finetune`,
--seeds) as it is and as grafts that isolate the word embeddings:
  as_is            the checkpoint unchanged;
  rare_reset       rows of tokens the corpus has fewer than --rare_below times set back to --init's;
  rare_centered    those rows less their common vector (the shared drift removed, their own part kept);
  init_words       the pretrained layers with --init's whole word-embedding table;
  words_only       --init's layers with the pretrained word-embedding table.
"""
import argparse
import itertools
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import time_to_quality  # noqa: E402
from bench.sentence_vector_spread import named_paths  # noqa: E402
from flaxbert.finetune.tasks.readers import read_table  # noqa: E402
from flaxbert.interop import pretrained  # noqa: E402
from flaxbert.text.tokenization import load_tokenizer  # noqa: E402

WORDS = ("bert", "embeddings", "word_embeddings", "embedding")  # the word-embedding table in the params
GRAFTS = ("as_is", "rare_reset", "rare_centered", "init_words", "words_only")


def token_counts(tokenizer, lines, vocab_size: int, chunk: int = 20_000) -> np.ndarray:
  counts = np.zeros(vocab_size, np.int64)
  for i in range(0, len(lines), chunk):
    ids = np.fromiter(itertools.chain.from_iterable(tokenizer.encode_batch(lines[i:i + chunk])), np.int64)
    counts += np.bincount(ids, minlength=vocab_size)
  return counts


def word_table(params) -> np.ndarray:
  for key in WORDS:
    params = params[key]
  return np.asarray(jax.device_get(params))


def with_words(params, table: np.ndarray):
  """A host copy of params with the word-embedding table replaced."""
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(params))
  node = params
  for key in WORDS[:-1]:
    node = node[key]
  node[WORDS[-1]] = table
  return params


def bucket_stats(table: np.ndarray, init: np.ndarray, ids: np.ndarray) -> dict:
  rows, start = table[ids], init[ids]
  shared = rows.mean(0)
  own = rows - shared
  cos = (own * start).sum(1) / np.maximum(np.linalg.norm(own, axis=1) * np.linalg.norm(start, axis=1), 1e-12)
  return {"norm": float(np.linalg.norm(rows, axis=1).mean()),
          "shared_share": float(shared @ shared / (rows * rows).sum(1).mean()),
          "init_cosine": float(cos.mean())}


def grafts(pre, init, rare: np.ndarray) -> dict:
  """GRAFTS' params of the pretrained `pre` against `init` (both pretrained.load results)."""
  table, start = word_table(pre.params), word_table(init.params)
  reset, centered = table.copy(), table.copy()
  reset[rare] = start[rare]
  centered[rare] = table[rare] - table[rare].mean(0)
  return {"as_is": pre.params, "rare_reset": with_words(pre.params, reset),
          "rare_centered": with_words(pre.params, centered), "init_words": with_words(pre.params, start),
          "words_only": with_words(init.params, table)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--init", type=Path, required=True, help="the weights pretraining started from")
  parser.add_argument("--models", required=True, help="name=path,… (flaxbert workdir or HF dir)")
  parser.add_argument("--corpus", required=True, help="the pretraining text files, comma-separated")
  parser.add_argument("--task", type=Path, required=True, help="a labelled TSV (--text_column) to count tokens of")
  parser.add_argument("--text_column", default="sentence")
  parser.add_argument("--buckets", default="0,1,10,100,1000,10000", help="lower edges of the corpus-count buckets")
  parser.add_argument("--rare_below", type=int, default=100, help="rare: fewer corpus occurrences than this")
  parser.add_argument("--graft", default="", help="a --models name to fine-tune as GRAFTS (empty: none)")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder as ../shared/data")
  parser.add_argument("--work", type=Path, default=Path("/tmp/flaxbert_embedding_drift"))
  parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "word_embedding_drift.json")
  args = parser.parse_args()
  models = named_paths(args.models, "--models")
  if "init" in models:
    raise SystemExit("--models: the name 'init' is --init's in the report; choose another")
  if args.graft and args.graft not in models:
    raise SystemExit(f"--graft {args.graft!r}: not one of --models {sorted(models)}")
  corpus = [Path(f) for f in args.corpus.split(",") if f]
  missing = [str(f) for f in corpus if not f.is_file()]
  if missing or not corpus:
    raise SystemExit(f"--corpus: {missing or args.corpus!r}: expected existing text files, comma-separated")
  try:
    edges = [int(e) for e in args.buckets.split(",")]
  except ValueError:
    edges = []
  if not edges or edges != sorted(set(edges)) or edges[0] < 0:
    raise SystemExit(f"--buckets {args.buckets!r}: expected increasing counts from 0 up, e.g. 0,1,10,100")
  init = pretrained.load(args.init)
  tokenizer = load_tokenizer(init.vocab)
  start = word_table(init.params)
  corpus_lines = [line for f in corpus for line in f.read_text(encoding="utf-8").splitlines()]
  counts = token_counts(tokenizer, corpus_lines, len(start))
  texts = [e.text_a for e in read_table(args.task, args.text_column, None, None, labelled=False)]
  task = token_counts(tokenizer, texts, len(start))
  edges.append(np.iinfo(np.int64).max)
  buckets = [(lo, hi, np.flatnonzero((counts >= lo) & (counts < hi) & (task > 0))) for lo, hi in zip(edges, edges[1:])]
  report = {"command": "bench/word_embedding_drift.py " + " ".join(sys.argv[1:]),
            "corpus_tokens": int(counts.sum()), "task_tokens": int(task.sum()),
            "buckets": [{"corpus_count": [lo, None if hi == edges[-1] else hi], "types": len(ids),
                         "task_tokens": int(task[ids].sum())} for lo, hi, ids in buckets],
            "models": {}, "grafts": {}}
  loaded = {"init": init, **{name: pretrained.load(path) for name, path in models.items()}}
  for name, model in loaded.items():
    table = word_table(model.params)
    if table.shape != start.shape:
      raise SystemExit(f"--models {name}={models[name]}: word embeddings {table.shape}, but --init {args.init} "
                       f"has {start.shape}; the models must share --init's vocabulary and width")
    report["models"][name] = [bucket_stats(table, start, ids) if len(ids) > 1 else None for *_, ids in buckets]
    print(name, json.dumps(report["models"][name]), flush=True)
  if args.graft:
    rare = counts < args.rare_below
    report["rare_types"] = int(rare.sum())
    recipe = time_to_quality.arguments().parse_args(["--data", str(args.data)])  # the bench's default recipe
    task_files = time_to_quality.finetune_tasks(recipe, args.work)["sst2"]
    pre = loaded[args.graft]
    for variant, params in grafts(pre, init, rare).items():
      folder = pretrained.save_pretrained(args.work / "grafts" / variant, pre.model, params, format="hf",
                                          vocab=init.vocab, overwrite=True)
      accuracy = [time_to_quality.finetune(recipe, "sst2", task_files, variant, str(folder), int(seed), args.work)
                  ["scores"]["accuracy"] for seed in args.seeds.split(",")]
      report["grafts"][variant] = {"accuracy": accuracy, "mean": float(np.mean(accuracy)),
                                   "min": min(accuracy), "max": max(accuracy)}
      print(variant, json.dumps(report["grafts"][variant]), flush=True)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
