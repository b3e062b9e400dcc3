"""Benchmark `flaxbert prepare` on LitBank against the original create_pretraining_data.py figures.

  .venv/bin/python bench/prepare_litbank.py --litbank ../shared/data/litbank-gutenberg-novels \
      --vocab ../shared/data/bert-vocab/bert-base-uncased-vocab.txt [--out bench/out/prepare_litbank.json]

Input as for the reference run: the 100 books concatenated in file-name order, blank lines
inside a book dropped (so every non-blank line is a segment), one blank line between books.
Settings: uncased, max_seq_length 128, max_predictions_per_seq 20, dupe_factor 5, seed 12345.
The reference (measured on this 2-core machine with the unchanged original script, one core):
427 s wall, 900,249 instances, peak RSS 3.8 GB; pass --reference_* to change it, e.g. after
rerunning the original beside this benchmark.
Writes JSON: wall time, documents/s, examples/s, tokens/s, peak RSS (this process and its
workers), and the speed-up over the reference.
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import prepare as prepare_config  # noqa: E402
from data_prep.builder import prepare  # noqa: E402


def write_original_format(litbank: Path, path: Path, max_books: int = 0) -> int:
  books = sorted((litbank / "texts").glob("*.txt"))[:max_books or None]
  if not books:
    raise SystemExit(f"{litbank}/texts: no .txt books found")
  with open(path, "w", encoding="utf-8") as out:
    for i, book in enumerate(books):
      if i:
        out.write("\n")
      for line in book.read_text(encoding="utf-8").splitlines():
        if line.strip():
          out.write(line.strip() + "\n")
  return len(books)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--litbank", type=Path, required=True)
  parser.add_argument("--vocab", type=Path, required=True)
  parser.add_argument("--out", type=Path, default=Path("bench/out/prepare_litbank.json"))
  parser.add_argument("--dupe_factor", type=int, default=5)
  parser.add_argument("--books", type=int, default=0,
                      help="only the first N books in file-name order (0: all), e.g. to see that peak memory "
                           "does not grow with the corpus")
  parser.add_argument("--num_workers", type=int, default=0)
  parser.add_argument("--chunk_chars", type=int, default=None, help="default: configs/prepare.py's")
  parser.add_argument("--reference_seconds", type=float, default=427.0)
  parser.add_argument("--reference_instances", type=int, default=900_249)
  parser.add_argument("--reference_peak_rss_gb", type=float, default=3.8)
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    corpus = Path(tmp) / "litbank_original_format.txt"
    books = write_original_format(args.litbank, corpus, args.books)
    corpus_bytes = corpus.stat().st_size  # the original-format input file
    c = prepare_config.get_config("original")
    c.input, c.vocab, c.output_dir = (str(corpus),), str(args.vocab), str(Path(tmp) / "dataset")
    c.max_seq_length, c.max_predictions_per_seq, c.dupe_factor, c.seed = 128, 20, args.dupe_factor, 12345
    c.num_workers = args.num_workers
    if args.chunk_chars:
      c.chunk_chars = args.chunk_chars
    start = time.perf_counter()
    _, metadata = prepare(c)
    wall = time.perf_counter() - start
    info = json.loads((Path(c.output_dir) / "dataset_info.json").read_text())
    examples = {s["name"]: sum(int(n) for n in s["shardLengths"]) for s in info["splits"]}
  rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  total = sum(examples.values())
  result = {
      "corpus": str(args.litbank), "books": books, "corpus_bytes": corpus_bytes,
      "settings": {"max_seq_length": 128, "max_predictions_per_seq": 20, "dupe_factor": args.dupe_factor,
                   "seed": 12345, "num_workers": args.num_workers or os.cpu_count(), "chunk_chars": c.chunk_chars},
      "wall_seconds": round(wall, 2),
      "examples": examples, "examples_total": total,
      "documents": metadata["sources"]["documents"], "tokens": metadata["tokens"],
      "documents_per_second": round(metadata["sources"]["documents"] / wall, 2),
      "examples_per_second": round(total / wall, 1),
      "tokens_per_second": round(metadata["tokens"] / wall, 1),
      "peak_rss_gb": {"main": round(rss_self, 3), "largest_worker": round(metadata["peak_worker_rss_mb"] / 1024, 3)},
      "reference": {"seconds": args.reference_seconds, "instances": args.reference_instances,
                    "peak_rss_gb": args.reference_peak_rss_gb},
      "throughput_ratio_vs_reference": round((total / wall) / (args.reference_instances / args.reference_seconds), 2),
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
