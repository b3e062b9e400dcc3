"""Lead-k baselines for abstractive summarization test sets: the source's first k sentences (or,
for dialogues, turns), scored by the ROUGE that `flaxbert finetune --config
configs/finetune.py:summarization_abstractive` reports (rouge-score, stemmed F1 × 100, best over
several references), so the two sit side by side.

  python bench/lead_baseline.py --data ../shared/data/dialogsum/test.jsonl --source_field dialogue \
      --target_fields summary1,summary2,summary3 --units lines
  python bench/lead_baseline.py --data ../shared/data/scitldr-a/test.jsonl --source_field source \
      --target_fields target --units sentences

Writes bench/out/lead_baseline_<file stem>.json: ROUGE for k = 1, 2, 3 and the source's length.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flaxbert.finetune.tasks import parallel, scores  # noqa: E402
from flaxbert.finetune.tasks.readers import jsonl_rows  # noqa: E402
from flaxbert.text.sentences import split_sentences  # noqa: E402


def units(record: dict, field: str, how: str) -> list[str]:
  """The source as sentences: a list value is one already; text is split by lines or sentences."""
  value = record[field]
  if isinstance(value, list):
    return [v for v in value if v.strip()]
  if how == "lines":
    return [line.strip() for line in value.splitlines() if line.strip()]
  return split_sentences(value)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="a .jsonl test file")
  parser.add_argument("--source_field", default="source")
  parser.add_argument("--target_fields", default="target", help="comma-separated reference fields")
  parser.add_argument("--units", choices=("lines", "sentences"), default="sentences",
                      help="lines: one turn a line (DialogSum); sentences: flaxbert's sentence splitter")
  parser.add_argument("--out")
  args = parser.parse_args()
  fields = [f for f in args.target_fields.split(",") if f]
  examples = parallel.read_spec(args.data, args.source_field, fields)
  records = {f"{args.data}:{line}": r for line, r in jsonl_rows(args.data)}
  sources = [units(records[e.where], args.source_field, args.units) for e in examples]
  refs = [e.references for e in examples]
  report = {"data": args.data, "examples": len(examples), "units": args.units,
            "mean_units": sum(map(len, sources)) / len(sources)}
  for k in (1, 2, 3):
    report[f"lead{k}"] = scores.rouge_scores([" ".join(s[:k]) for s in sources], refs)
    print(f"lead-{k}: " + " ".join(f"{key} {v:.2f}" for key, v in report[f"lead{k}"].items()))
  out = Path(args.out or Path(__file__).parent / "out" / f"lead_baseline_{Path(args.data).stem}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
