"""Tokenization speed: flaxbert's WordPiece against transformers' BertTokenizer on the same text.

  .venv/bin/python bench/tokenize_speed.py --text_dir ../shared/data/litbank-gutenberg-novels/texts \
      --vocab ../shared/data/bert-vocab/bert-base-uncased-vocab.txt [--max_lines 300000]

One process, one core for flaxbert (data preparation runs one such tokenizer per worker process);
transformers' fast tokenizer uses its own threads. Both run twice, alternating, on the same lines;
the JSON has each run's tokens/s, the median ratio, and how many lines' ids differ (transformers
with its word limit set to the original's 200 characters).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flaxbert.text.tokenization import load_tokenizer  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--text_dir", type=Path, required=True)
  parser.add_argument("--vocab", type=Path, required=True)
  parser.add_argument("--max_lines", type=int, default=300_000)
  parser.add_argument("--out", type=Path, default=Path("bench/out/tokenize_speed.json"))
  args = parser.parse_args()
  lines = []
  for book in sorted(args.text_dir.glob("*.txt")):
    lines.extend(line.strip() for line in book.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(lines) >= args.max_lines:
      break
  lines = lines[:args.max_lines]
  runs = {"flaxbert": [], "transformers": []}
  ids = {}
  for _ in range(2):
    tok = load_tokenizer(args.vocab, lower_case=True)  # a fresh word cache each run
    start = time.perf_counter()
    ids["flaxbert"] = tok.encode_batch(lines)
    runs["flaxbert"].append(time.perf_counter() - start)
    try:
      import transformers  # pylint: disable=import-outside-toplevel
    except ImportError:
      continue
    hf = transformers.BertTokenizer(vocab=str(args.vocab), do_lower_case=True)
    hf.backend_tokenizer.model.max_input_chars_per_word = 200
    start = time.perf_counter()
    ids["transformers"] = hf(lines, add_special_tokens=False)["input_ids"]
    runs["transformers"].append(time.perf_counter() - start)
  tokens = sum(map(len, ids["flaxbert"]))
  result = {"lines": len(lines), "tokens": tokens,
            "tokens_per_second": {k: [round(tokens / t) for t in v] for k, v in runs.items() if v}}
  if runs["transformers"]:
    result["ratio_flaxbert_over_transformers"] = round(
        statistics.median(runs["transformers"]) / statistics.median(runs["flaxbert"]), 2)
    result["lines_that_differ"] = sum(a != b for a, b in zip(ids["flaxbert"], ids["transformers"]))
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
