"""Classification on your own files: any label set, multi-label and regression from CSV/TSV/JSONL,
probabilities out, bad input named before anything is written; models trained here load in
transformers with the same logits, and transformers' task folders load back into flaxbert."""
import json
from pathlib import Path

import numpy as np
import pytest

from configs import finetune as finetune_config
from finetune_fixtures import TOPICS, topic_rows, write_pretrained, write_rows
from flaxbert import cli
from flaxbert.errors import InputError
from flaxbert.finetune.job import evaluate, predict, restore, train_and_evaluate
from flaxbert.finetune.tasks import readers


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
  return write_pretrained(tmp_path_factory.mktemp("pretrained") / "bert", "hf")


def custom(bert: Path, train: Path, dev: Path, **overrides):
  c = finetune_config.get_config("classification,tiny")
  c.init, c.train_path, c.eval_path, c.label_column = str(bert), str(train), str(dev), "topic"
  c.optim.learning_rate, c.num_epochs, c.optim.warmup_proportion = 3e-3, 6.0, 0.0
  c.eval_every_epoch = False
  c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = 0.0
  for key, value in overrides.items():
    c[key] = value
  return c


@pytest.fixture(scope="module")
def topics(bert, tmp_path_factory):
  """A 3-topic classifier trained on a CSV: (config, workdir, results)."""
  tmp = tmp_path_factory.mktemp("topics")
  train = write_rows(tmp / "train.csv", topic_rows(96, 0))
  dev = write_rows(tmp / "dev.csv", topic_rows(40, 1))
  c = custom(bert, train, dev)
  return c, tmp / "run", train_and_evaluate(c, tmp / "run")


@pytest.fixture(scope="module")
def multi(bert, tmp_path_factory):
  """A multi-label classifier trained on JSONL lists: (config, workdir, results)."""
  tmp = tmp_path_factory.mktemp("multi")
  train = write_rows(tmp / "train.jsonl", topic_rows(128, 0, multi_label=True))
  dev = write_rows(tmp / "dev.jsonl", topic_rows(40, 1, multi_label=True))
  c = custom(bert, train, dev, multi_label=True, num_epochs=16.0)
  c.optim.learning_rate, c.optim.warmup_proportion = 1e-3, 0.1  # sigmoid outputs learn slower on the 1-layer model
  return c, tmp / "run", train_and_evaluate(c, tmp / "run")


def read_jsonl(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_topic_labels_are_learnt_from_the_file_scored_per_class_and_predicted_with_probabilities(topics, tmp_path):
  c, w, results = topics
  assert set(results) == {"accuracy", "macro_f1", "f1_politics", "f1_sport", "f1_tech"}
  assert results["accuracy"] >= 0.9 and results["macro_f1"] >= 0.85
  record = json.loads((w / "task.json").read_text())
  assert record["task"] == "classification" and record["state"]["labels"] == ["politics", "sport", "tech"]
  # predict: one object per input row, in input order, every label's probability; no labels needed
  rows = topic_rows(12, 5)
  unlabelled = write_rows(tmp_path / "new.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
  assert cli.main(["predict", "--config", "finetune:classification,tiny", "--workdir", str(w), "--input",
                   str(unlabelled), "--output", str(tmp_path / "p.jsonl"), "--config.label_column=topic"]) == 0
  preds = read_jsonl(tmp_path / "p.jsonl")
  assert [p["id"] for p in preds] == [r["id"] for r in rows]
  for p in preds:
    assert set(p["probabilities"]) == set(TOPICS) and sum(p["probabilities"].values()) == pytest.approx(1.0)
    assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
  assert np.mean([p["label"] == r["topic"] for p, r in zip(preds, rows)]) >= 0.8


def test_csv_tsv_and_jsonl_read_alike_and_multi_label_cells_as_lists_or_split(tmp_path):
  rows = topic_rows(6, 3)
  read = {ext: readers.read_table(write_rows(tmp_path / f"d.{ext}", rows), "text", None, "topic", True)
          for ext in ("csv", "tsv", "jsonl")}
  assert read["csv"][0].text_a == rows[0]["text"] and read["csv"][0].guid == "r0"
  for ext in ("tsv", "jsonl"):
    assert [(e.guid, e.text_a, e.label) for e in read[ext]] == [(e.guid, e.text_a, e.label) for e in read["csv"]]
  rows = topic_rows(6, 4, multi_label=True)
  as_json = readers.read_table(write_rows(tmp_path / "m.csv", rows), "text", None, "topic", True, multi_label=True)
  split = readers.read_table(write_rows(tmp_path / "s.csv", rows, "|"), "text", None, "topic", True,
                             multi_label=True, delimiter="|")
  assert [e.label for e in as_json] == [e.label for e in split] == [tuple(r["topic"]) for r in rows]


def test_multi_label_threshold_is_chosen_on_dev_recorded_and_used_by_predict(multi, tmp_path):
  c, w, results = multi
  assert {"micro_f1", "macro_f1", "subset_accuracy", "threshold", "f1_sport"} <= set(results)
  gold = [r["topic"] for r in topic_rows(40, 1, multi_label=True)]
  every_label = 2 * sum(map(len, gold)) / (sum(map(len, gold)) + 3 * len(gold))  # micro-F1 of predicting all
  assert results["micro_f1"] >= max(0.75, every_label + 0.1), (results, every_label)
  threshold = json.loads((w / "task.json").read_text())["defaults"]["threshold"]
  assert threshold == results["threshold"]
  assert predict(c, w, c.eval_path, str(tmp_path / "p.jsonl")) == 40
  for p in read_jsonl(tmp_path / "p.jsonl"):
    assert p["labels"] == [k for k, v in p["probabilities"].items() if v >= threshold]
  assert evaluate(c, w) == results  # the recorded threshold, not one chosen again


def test_regression_reports_pearson_spearman_and_mse(bert, tmp_path):
  rng = np.random.RandomState(0)
  rows = [{"text": r["text"], "topic": f"{(3.0 if r['topic'] == 'sport' else 0.5) + 0.1 * rng.rand():.2f}"}
          for r in topic_rows(64, 0)]
  train, dev = write_rows(tmp_path / "t.csv", rows[:48]), write_rows(tmp_path / "d.csv", rows[48:])
  results = train_and_evaluate(custom(bert, train, dev, regression=True), tmp_path / "run")
  assert set(results) == {"pearson", "spearman", "mse"} and results["pearson"] > 0.5
  assert json.loads((tmp_path / "run" / "task.json").read_text())["state"]["regression"] is True
  assert cli.main(["convert", str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"]) == 0
  hf = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert (hf["architectures"], hf["problem_type"], len(hf["id2label"])) == (
      ["BertForSequenceClassification"], "regression", 1)


@pytest.mark.parametrize("case, rows, dev_rows, expected", [
    ("unseen dev label", None, [{"text": "w61 w31", "topic": "weather"}],
     r"dev.csv:2: label\(s\) \['weather'\] in column 'topic' of the dev data are not in the training label set"),
    ("empty label", [{"text": "w61", "topic": "sport"}, {"text": "w62", "topic": " "}], None,
     r"train.csv:3: expected a label in column 'topic', got"),
    ("one class", [{"text": "w61", "topic": "sport"}, {"text": "w62", "topic": "sport"}], None,
     r"train.csv: column 'topic' holds 1 class\(es\) \(\['sport'\]\) over all 2 rows; a classifier needs at least 2"),
    ("missing column", [{"text": "w61", "label": "sport"}, {"text": "w62", "label": "tech"}], None,
     r"train.csv:1: expected a column 'topic' in the header row"),
    ("dev without labels", None, [{"text": "w61 w31"}], r"dev.csv:1: expected a column 'topic' in the header row"),
])
def test_bad_files_are_named_by_file_line_and_column_before_anything_is_written(bert, tmp_path, case, rows,
                                                                                  dev_rows, expected):
  del case
  train = write_rows(tmp_path / "train.csv", rows or topic_rows(16, 0))
  dev = write_rows(tmp_path / "dev.csv", dev_rows or topic_rows(8, 1))
  with pytest.raises(InputError, match=expected):
    train_and_evaluate(custom(bert, train, dev), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_multi_label_and_regression_cells_are_checked(tmp_path):
  bad = write_rows(tmp_path / "m.csv", [{"text": "a", "topic": "sport"}])
  with pytest.raises(InputError, match=r"m.csv:2: expected a JSON list of labels in column 'topic'"):
    readers.read_table(bad, "text", None, "topic", True, multi_label=True)
  empty = write_rows(tmp_path / "e.csv", [{"text": "a", "topic": "x||y"}])
  with pytest.raises(InputError, match=r"e.csv:2: empty or non-text label in column 'topic'"):
    readers.read_table(empty, "text", None, "topic", True, multi_label=True, delimiter="|")
  score = write_rows(tmp_path / "r.csv", [{"text": "a", "topic": "high"}])
  with pytest.raises(InputError, match=r"r.csv:2: expected a number for the score in column 'topic', got 'high'"):
    readers.with_score(readers.read_table(score, "text", None, "topic", True)[0], "topic")


# --- out to transformers and back ------------------------------------------------------------------


def _torch_logits(model, features: dict) -> np.ndarray:
  import torch  # pylint: disable=import-outside-toplevel
  as_torch = lambda k: torch.from_numpy(np.asarray(features[k], np.int64))  # noqa: E731
  with torch.no_grad():
    out = model.eval()(input_ids=as_torch("input_ids"), token_type_ids=as_torch("segment_ids"),
                       attention_mask=as_torch("input_mask"))
  return out


def _flaxbert_outputs(workdir: Path, examples_path: str, config=None):
  task, session, params = restore(workdir, config)
  examples = task.read(examples_path, False, "eval_path")
  features = task.featurize(examples, session.tokenizer, training=False)
  return task, session, features, task.outputs(session, params, features)


@pytest.mark.parametrize("fixture", ["topics", "multi"])
def test_sequence_classifiers_export_to_transformers_with_labels_problem_type_tokenizer_and_logits(
    fixture, request, tmp_path):
  transformers = pytest.importorskip("transformers", reason="needs transformers (pip install -e .[test])")
  pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
  c, w, _ = request.getfixturevalue(fixture)
  assert cli.main(["convert", str(w), str(tmp_path / "hf"), "--to", "hf"]) == 0
  model, info = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf",
                                                                                output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  assert model.config.id2label == {0: "politics", 1: "sport", 2: "tech"}
  assert model.config.problem_type == ("multi_label_classification" if c.multi_label else "single_label_classification")
  task, session, features, outputs = _flaxbert_outputs(w, c.eval_path, c)
  texts = [e.text_a for e in task.read(c.eval_path, False, "eval_path")]
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  ids = tokenizer(texts, padding="max_length", max_length=c.max_seq_length, truncation=True)["input_ids"]
  np.testing.assert_array_equal(np.asarray(ids), features.arrays["input_ids"])
  want = _torch_logits(model, features.arrays).logits.numpy()
  np.testing.assert_allclose(outputs["logits"], want, atol=1e-4, rtol=0)


def test_a_transformers_folder_saved_by_transformers_evaluates_and_predicts_as_the_workdir(topics, tmp_path):
  transformers = pytest.importorskip("transformers", reason="needs transformers (pip install -e .[test])")
  pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
  c, w, results = topics
  cli.main(["convert", str(w), str(tmp_path / "hf"), "--to", "hf"])
  model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  elsewhere = tmp_path / "saved_by_transformers"
  model.save_pretrained(elsewhere)
  tokenizer.save_pretrained(elsewhere)  # transformers 5 writes tokenizer.json, no vocab.txt
  assert evaluate(c, elsewhere) == pytest.approx(results)
  predict(c, w, c.eval_path, str(tmp_path / "ours.jsonl"))
  predict(c, elsewhere, c.eval_path, str(tmp_path / "theirs.jsonl"))
  for a, b in zip(read_jsonl(tmp_path / "ours.jsonl"), read_jsonl(tmp_path / "theirs.jsonl")):
    assert a["label"] == b["label"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
  ner = finetune_config.get_config("ner,tiny")
  with pytest.raises(InputError, match=r"a transformers BertForSequenceClassification folder, but the config is "
                                       r"for ner \(a ner task\)"):
    evaluate(ner, elsewhere)
