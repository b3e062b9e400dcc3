"""`flaxbert prepare` stage 2 on this machine vs as an Apache Beam pipeline, on the same corpus.

  .venv/bin/python bench/beam_prepare.py --litbank ../shared/data/litbank-gutenberg-novels \
      --vocab ../shared/data/bert-vocab/bert-base-uncased-vocab.txt [--workers 2] [--repeats 3] \
      [--books N] [--out bench/results/beam_prepare.json]

The corpus is bench/prepare_litbank.py's (the books in the original's one-sentence-per-line format,
the same settings: max_seq_length 128, 20 predictions, dupe_factor 5, seed 12345), prepared whole
by `data_prep.builder.prepare` three ways:
  serial       num_workers=1: every work unit one after another in this process
  local_pool   num_workers=WORKERS: the default path (one worker per core when num_workers=0)
  beam         Beam's DirectRunner, --direct_num_workers=WORKERS --direct_running_mode=multi_processing
The sides alternate (the order reversed every repeat), and the JSON gives each side's wall times,
their median and its ratio to serial's. Stage 1 (splitting the text into chunks) is part of every
time and the same on every side. Each side's shards are hashed on its first run: `same_shards`
says whether all sides wrote byte-identical shards. Needs the `beam` extra.
"""
import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ml_collections

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import prepare as prepare_config  # noqa: E402
from data_prep.builder import prepare  # noqa: E402
from prepare_litbank import write_original_format  # noqa: E402  (bench/, this script's folder)


def settings(corpus: Path, vocab: Path, output: Path, side: str, args) -> ml_collections.ConfigDict:
  c = prepare_config.get_config("original")
  c.input, c.vocab, c.output_dir = (str(corpus),), str(vocab), str(output)
  c.max_seq_length, c.max_predictions_per_seq, c.dupe_factor, c.seed = 128, 20, args.dupe_factor, 12345
  if args.chunk_chars:
    c.chunk_chars = args.chunk_chars
  c.num_workers = 1 if side == "serial" else args.workers
  if side == "beam":
    c.beam_options = (f"--runner=DirectRunner --direct_num_workers={args.workers} "
                      "--direct_running_mode=multi_processing")
  return c


def shard_digest(dataset: Path) -> str:
  """SHA-256 over the shard files in name order (their bytes, not the metadata beside them)."""
  h = hashlib.sha256()
  for path in sorted(dataset.glob("*.array_record*")):
    h.update(path.name.encode())
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--litbank", type=Path, required=True, help="the LitBank folder (its texts/*.txt are read)")
  parser.add_argument("--vocab", type=Path, required=True)
  parser.add_argument("--workers", type=int, default=2, help="worker processes of local_pool and of beam")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--books", type=int, default=0, help="only the first N books (0: all), for a quick check")
  parser.add_argument("--dupe_factor", type=int, default=5)
  parser.add_argument("--chunk_chars", type=int, default=None, help="default: configs/prepare.py's")
  parser.add_argument("--out", type=Path, default=Path("bench/results/beam_prepare.json"))
  args = parser.parse_args()
  sides = ("serial", "local_pool", "beam")
  times = {s: [] for s in sides}
  digests, examples, meta = {}, {}, {}
  with tempfile.TemporaryDirectory(prefix="beam_prepare_") as tmp:
    corpus = Path(tmp) / "litbank_original_format.txt"
    books = write_original_format(args.litbank, corpus, args.books)
    for r in range(args.repeats):
      for side in (sides if r % 2 == 0 else sides[::-1]):
        output = Path(tmp) / f"{side}-{r}"
        c = settings(corpus, args.vocab, output, side, args)
        start = time.perf_counter()
        _, metadata = prepare(c)
        times[side].append(time.perf_counter() - start)
        print(f"repeat {r} {side}: {times[side][-1]:.2f} s", flush=True)
        if side not in digests:
          digests[side] = shard_digest(output)
          info = json.loads((output / "dataset_info.json").read_text())
          examples[side] = {s["name"]: sum(int(n) for n in s["shardLengths"]) for s in info["splits"]}
          meta[side] = {"tokens": metadata["tokens"], "beam": metadata["beam"],
                        "peak_worker_rss_mb": round(metadata["peak_worker_rss_mb"], 1)}
        shutil.rmtree(output)
    corpus_bytes = corpus.stat().st_size
  median = {s: statistics.median(v) for s, v in times.items()}
  result = {
      "date": datetime.date.today().isoformat(), "corpus": str(args.litbank), "books": books,
      "corpus_bytes": corpus_bytes, "cpu_count": os.cpu_count(), "workers": args.workers, "repeats": args.repeats,
      "settings": {"max_seq_length": 128, "max_predictions_per_seq": 20, "dupe_factor": args.dupe_factor,
                   "seed": 12345, "chunk_chars": args.chunk_chars or prepare_config.get_config("original").chunk_chars},
      "median_s": {s: round(v, 2) for s, v in median.items()},
      "speedup_over_serial": {s: round(median["serial"] / v, 2) for s, v in median.items()},
      "runs_s": {s: [round(t, 2) for t in v] for s, v in times.items()},
      "examples": examples["serial"], "same_examples": len({json.dumps(e) for e in examples.values()}) == 1,
      "same_shards": len(set(digests.values())) == 1, "metadata": meta,
      "command": "bench/beam_prepare.py " + " ".join(sys.argv[1:]),
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
