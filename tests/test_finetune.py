"""Fine-tuning end to end on generated data with a 1-layer BERT: every task family trains (the
loss falls), scores, resumes, evaluates and predicts through the same code the CLI runs."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from finetune_fixtures import (dropout, tiny_finetune_config, write_conll, write_mrpc, write_pretrained, write_squad,
                               write_sst2, write_stsb)
from flaxbert import cli
from flaxbert.errors import InputError
from flaxbert.finetune.job import evaluate, export_hf, generate_file, restore, train_and_evaluate
from flaxbert.training import loop


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
  return write_pretrained(tmp_path_factory.mktemp("pretrained") / "bert", "hf")


config = tiny_finetune_config


def losses(workdir: Path) -> list[float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if "loss" in r]


def export_and_compare_logits(c, workdir: Path, out: Path, auto_class: str) -> Path | None:
  """`flaxbert convert --to hf`; transformers' `auto_class` loads it with no missing or unexpected keys
  and gives flaxbert's outputs on the eval file's features (None without transformers)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  assert cli.main(["convert", str(workdir), str(out), "--to", "hf"]) == 0
  model, info = getattr(transformers, auto_class).from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  task, session, params = restore(workdir, c)
  features = task.featurize(task.read(c.eval_path, False, "eval_path"), session.tokenizer, training=False)
  ours = task.outputs(session, params, features)
  a = {k: torch.from_numpy(np.asarray(features.arrays[k], np.int64)) for k in ("input_ids", "segment_ids", "input_mask")}
  with torch.no_grad():
    theirs = model.eval()(input_ids=a["input_ids"], token_type_ids=a["segment_ids"], attention_mask=a["input_mask"])
  mask = features.arrays["input_mask"] > 0
  for name in ours:
    np.testing.assert_allclose(ours[name][mask], getattr(theirs, name).numpy()[mask], atol=1e-4, rtol=0)
  return out


def test_sst2_trains_scores_resumes_evaluates_and_predicts(bert, tmp_path, capsys):
  train, dev = write_sst2(tmp_path / "train.tsv", 96, 0), write_sst2(tmp_path / "dev.tsv", 43, 1)
  c = config("glue_sst2", bert, train, dev)
  results = train_and_evaluate(c, tmp_path / "run")
  curve = losses(tmp_path / "run")
  assert np.mean(curve[-3:]) < np.mean(curve[:3]) * 0.7, curve
  assert results["accuracy"] >= 0.9, results
  assert json.loads((tmp_path / "run" / "eval_results.json").read_text()) == results
  preds = [json.loads(l) for l in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
  assert len(preds) == 43 and {p["label"] for p in preds} <= {"0", "1"}
  # Exact evaluation: 43 examples with batches of 8 (last one padded) score as the host computes.
  gold = [l.split("\t")[1] for l in dev.read_text().splitlines()[1:]]
  assert results["accuracy"] == pytest.approx(np.mean([p["label"] == g for p, g in zip(preds, gold)]))
  # evaluate and predict from the workdir, via the command line
  own = (tmp_path / "run" / "eval_results.json").read_text()
  c.eval_path = str(write_sst2(tmp_path / "other.tsv", 9, 3))
  other = evaluate(c, tmp_path / "run")  # goes beside the run's own results, never over them
  assert json.loads((tmp_path / "run" / "evaluations" / "other" / "eval_results.json").read_text()) == other
  assert (tmp_path / "run" / "evaluations" / "other" / "predictions.jsonl").is_file()
  assert (tmp_path / "run" / "eval_results.json").read_text() == own
  c.eval_path = str(dev)
  again = evaluate(c, tmp_path / "run")
  assert again == pytest.approx(results)
  c.eval_path = f"{dev},{write_sst2(tmp_path / 'dev_mismatched.tsv', 9, 2)}"  # e.g. MNLI's two dev sets
  both = evaluate(c, tmp_path / "run")
  assert set(both) == {"accuracy", "dev_mismatched_accuracy"} and both["accuracy"] == pytest.approx(results["accuracy"])
  assert cli.main(["predict", "--config", "finetune:glue_sst2,tiny", "--workdir", str(tmp_path / "run"),
                   "--input", str(dev), "--output", str(tmp_path / "p.jsonl")]) == 0
  assert [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()] == preds
  # task.json names the family; commands it does not support say so in one line
  assert json.loads((tmp_path / "run" / "task.json").read_text())["kind"] == "classification"
  with pytest.raises(InputError, match="a classification workdir; generate needs a translation or"):
    generate_file(tmp_path / "run", dev, tmp_path / "g.txt")
  assert cli.main(["convert", str(tmp_path / "run"), str(tmp_path / "tf1"), "--to", "tf1"]) == 2
  assert "--to tf1: a fine-tuned glue_sst2 workdir exports to transformers (--to hf) only" in capsys.readouterr().err
  # a task.json of flaxbert 0.1.0 (no kind, settings at the top) still evaluates
  record = json.loads((tmp_path / "run" / "task.json").read_text())
  (tmp_path / "run" / "task.json").write_text(json.dumps({
      "task": "glue_sst2", "state": record["state"], "model": record["model"], "pooling": "mean",
      "inter_sentence_layers": 0, **record["settings"]}))
  c.eval_path = str(dev)
  assert evaluate(c, tmp_path / "run") == pytest.approx(results)
  assert train_and_evaluate(c, tmp_path / "run") == pytest.approx(results)  # a finished run, rerun: nothing to train
  assert json.loads((tmp_path / "run" / "task.json").read_text()) == record  # … and its task.json upgraded


class StopAfter:
  """flaxbert.training.loop.StopRequest stand-in: reports a SIGTERM at the `steps`-th check (one check per step)."""
  steps = 0

  def __init__(self):
    self.reads = 0

  @property
  def signal(self):
    self.reads += 1
    return "SIGTERM" if self.reads == StopAfter.steps else None

  def restore(self):
    pass


def final_params(workdir: Path):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from flaxbert.training import checkpoint  # pylint: disable=import-outside-toplevel
  mngr = checkpoint.manager(workdir, asynchronous=False)
  params = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
  mngr.close()
  return jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.asarray, params))


def test_interrupted_run_resumes_exactly(bert, tmp_path, monkeypatch):
  train, dev = write_sst2(tmp_path / "train.tsv", 40, 0), write_sst2(tmp_path / "dev.tsv", 8, 1)
  c = dropout(config("glue_sst2", bert, train, dev, num_epochs=2.0), 0.1)  # 10 steps; dropout draws from the rng
  train_and_evaluate(c, tmp_path / "straight")
  monkeypatch.setattr(loop, "StopRequest", StopAfter)
  StopAfter.steps = 3
  assert train_and_evaluate(c, tmp_path / "split") == {}  # stopped at step 3 (mid-epoch): no scores yet
  assert not (tmp_path / "split" / "eval_results.json").exists()
  StopAfter.steps = 0
  train_and_evaluate(c, tmp_path / "split")
  for x, y in zip(final_params(tmp_path / "split"), final_params(tmp_path / "straight")):
    assert np.array_equal(x, y)
  assert json.loads((tmp_path / "split" / "eval_results.json").read_text()) == \
      json.loads((tmp_path / "straight" / "eval_results.json").read_text())


def test_accumulation_and_rematerialisation_leave_training_unchanged(bert, tmp_path):
  """The shared train step's exact accumulation and the encoder's remat serve fine-tuning too."""
  train, dev = write_sst2(tmp_path / "train.tsv", 32, 0), write_sst2(tmp_path / "dev.tsv", 8, 1)
  runs = {}
  for name, extra in (("plain", {}), ("accum", {"optim.grad_accum_steps": 2}), ("remat", {"model.remat_policy": "full"})):
    c = config("glue_sst2", bert, train, dev, num_epochs=1.0, max_examples_per_row=1)
    for key, value in extra.items():
      section, field = key.split(".")
      c[section][field] = value
    train_and_evaluate(c, tmp_path / name)
    runs[name] = final_params(tmp_path / name)
  for other in ("accum", "remat"):
    for x, y in zip(runs[other], runs["plain"]):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=other)
  c = config("glue_sst2", bert, train, dev)
  c.optim.grad_accum_steps = 3
  with pytest.raises(InputError, match=r"batch_size: 8 must be a positive multiple of the data-parallel devices "
                                       r"\(8\) and of optim.grad_accum_steps \(3\)"):
    train_and_evaluate(c, tmp_path / "bad")


def test_mrpc_pairs_and_stsb_regression_packed(bert, tmp_path, caplog):
  # one device: a batch of 8 examples packs several a row (with 8 devices a row holds 8 / 8 = 1)
  one = jax.devices()[:1]
  c = config("glue_mrpc", bert, write_mrpc(tmp_path / "m.tsv", 96, 0), write_mrpc(tmp_path / "md.tsv", 24, 1))
  with caplog.at_level("INFO", logger="flaxbert"):
    mrpc = train_and_evaluate(c, tmp_path / "mrpc", devices=one)
  assert set(mrpc) == {"accuracy", "f1"}
  assert "96 train examples → 96 features, packed into" in caplog.text
  s = config("glue_stsb", bert, write_stsb(tmp_path / "s.tsv", 96, 0, additive=True),
             write_stsb(tmp_path / "sd.tsv", 32, 1, additive=True))
  stsb = train_and_evaluate(s, tmp_path / "stsb", devices=one)
  assert set(stsb) == {"pearson", "spearman"} and stsb["spearman"] > 0.5, stsb
  # packed evaluation (one device) scores as one example a row does (8 devices, eval batch 8)
  assert evaluate(c, tmp_path / "mrpc") == pytest.approx(mrpc)
  assert evaluate(s, tmp_path / "stsb") == pytest.approx(stsb, rel=1e-3)  # float sums differ slightly


def test_ner_entity_f1_packed(bert, tmp_path, caplog):
  c = config("ner", bert, write_conll(tmp_path / "t.conll", 96, 0), write_conll(tmp_path / "d.conll", 24, 1))
  with caplog.at_level("INFO", logger="flaxbert"):
    results = train_and_evaluate(c, tmp_path / "ner", devices=jax.devices()[:1])
  assert "packed into" in caplog.text  # one device: several sentences a row
  assert {"precision", "recall", "f1"} <= set(results) and results["f1"] > 0.5, results
  # one sentence a row (8 devices, eval batch 8) scores as the packed rows did
  assert evaluate(c, tmp_path / "ner") == pytest.approx(results)
  preds = [json.loads(l) for l in (tmp_path / "ner" / "predictions.jsonl").read_text().splitlines()]
  gold = [[r.split("\t") for r in b.split("\n")] for b in (tmp_path / "d.conll").read_text().strip().split("\n\n")]
  assert [p["tokens"] for p in preds] == [[w for w, _ in g] for g in gold]
  assert all(len(p["labels"]) == len(p["probabilities"]) == len(p["tokens"]) for p in preds)
  assert all(0 < q <= 1 for p in preds for q in p["probabilities"])
  hf = export_and_compare_logits(c, tmp_path / "ner", tmp_path / "hf", "AutoModelForTokenClassification")
  if hf is not None:  # transformers' folder back in flaxbert: the same scores
    assert evaluate(c, hf) == pytest.approx(results)


@pytest.mark.parametrize("task", ["squad_v1", "squad_v2"])
def test_squad_packed(bert, tmp_path, task, caplog):
  v2 = task == "squad_v2"
  c = config(task, bert, write_squad(tmp_path / "t.json", 64, 0, v2), write_squad(tmp_path / "d.json", 16, 1, v2))
  with caplog.at_level("INFO", logger="flaxbert"):
    results = train_and_evaluate(c, tmp_path / "run", devices=jax.devices()[:1])
  assert "packed into" in caplog.text  # one device: several windows a row
  assert {"exact_match", "f1"} <= set(results)
  # one window a row (8 devices, eval batch 8) scores as the packed rows did
  assert evaluate(c, tmp_path / "run") == pytest.approx(results)
  predictions = json.loads((tmp_path / "run" / "predictions.json").read_text())
  questions = {q["id"]: p["context"] for a in json.loads((tmp_path / "d.json").read_text())["data"]
               for p in a["paragraphs"] for q in p["qas"]}
  assert set(predictions) == set(questions)
  # predict: the answer, where it stands in the context, its probability
  assert cli.main(["predict", "--config", f"finetune:{task},tiny", "--workdir", str(tmp_path / "run"), "--input",
                   c.eval_path, "--output", str(tmp_path / "p.jsonl")]) == 0
  answers = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
  assert [a["id"] for a in answers] == list(questions)
  for a in answers:
    assert a["answer"] == predictions[a["id"]] and 0 < a["probability"] <= 1
    if a["answer"]:
      assert questions[a["id"]][a["start"]:a["end"]] == a["answer"]
    else:
      assert a["start"] is None and v2
  hf = export_and_compare_logits(c, tmp_path / "run", tmp_path / "hf", "AutoModelForQuestionAnswering")
  if hf is not None:
    assert evaluate(c, hf) == pytest.approx(results)


def test_similarity_bi_encoder_and_embed(bert, tmp_path, capsys):
  train, dev = write_stsb(tmp_path / "s.tsv", 96, 0), write_stsb(tmp_path / "sd.tsv", 24, 1)
  results = train_and_evaluate(config("similarity", bert, train, dev), tmp_path / "sim")
  assert set(results) == {"pearson", "spearman"} and np.isfinite(list(results.values())).all(), results
  curve = losses(tmp_path / "sim")
  assert np.mean(curve[-3:]) < np.mean(curve[:3]) * 0.8, curve
  sentences = tmp_path / "sentences.txt"
  sentences.write_text("w0 w30 .\nw1 w31 w32 .\nw10 w40 .\n")
  for model, again in ((bert, []), (tmp_path / "sim", ["--overwrite"])):
    assert cli.main(["embed", "--model", str(model), "--input", str(sentences), "--output",
                     str(tmp_path / "v.npy"), "--pooling", "mean", *again]) == 0
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
  # An existing output needs --overwrite; the input is never the output.
  for output, flags, message in (("v.npy", [], "v.npy: exists; pass --overwrite"),
                                 ("sentences.txt", ["--overwrite"], "sentences.txt: is also the input")):
    assert cli.main(["embed", "--model", str(bert), "--input", str(sentences), "--output",
                     str(tmp_path / output), *flags]) == 2
    assert message in capsys.readouterr().err
  assert sentences.read_text().startswith("w0 w30 .")
  # the fine-tuned bi-encoder leaves as transformers' BertModel: the same vectors from its folder
  assert cli.main(["convert", str(tmp_path / "sim"), str(tmp_path / "hf"), "--to", "hf"]) == 0
  assert "→ transformers BertModel" in capsys.readouterr().out
  for model in (tmp_path / "sim", tmp_path / "hf"):
    cli.main(["embed", "--model", str(model), "--input", str(sentences), "--output", str(tmp_path / f"{model.name}.npy")])
  np.testing.assert_allclose(np.load(tmp_path / "sim.npy"), np.load(tmp_path / "hf.npy"), atol=1e-6)


def test_bad_inputs_are_named(bert, tmp_path):
  train = write_sst2(tmp_path / "train.tsv", 16, 0)
  bad = tmp_path / "bad.tsv"
  bad.write_text("sentence\tlabel\nw1 w2 .\t2\n")
  with pytest.raises(InputError, match=r"bad.tsv:2"):
    train_and_evaluate(config("glue_sst2", bert, train, bad), tmp_path / "a")
  with pytest.raises(InputError, match="train_path"):
    train_and_evaluate(config("glue_sst2", bert, tmp_path / "missing.tsv", train), tmp_path / "b")
  with pytest.raises(InputError, match="max_seq_length"):
    train_and_evaluate(config("glue_sst2", bert, train, train, max_seq_length=4096), tmp_path / "c")
  with pytest.raises(InputError, match="max_seq_length: 2 leaves next to no room for text"):
    train_and_evaluate(config("glue_sst2", bert, train, train, max_seq_length=2), tmp_path / "c")
  with pytest.raises(InputError, match="num_epochs: expected a number > 0, got -1"):
    train_and_evaluate(config("glue_sst2", bert, train, train, num_epochs=-1.0), tmp_path / "c")
  # SQuAD training data whose answers are never in their contexts: nothing to train on, nothing written.
  squad = json.loads(write_squad(tmp_path / "sq.json", 4, 0).read_text())
  for article in squad["data"]:
    article["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "absent"
  (tmp_path / "sq.json").write_text(json.dumps(squad))
  with pytest.raises(InputError, match=r"train_path: .*sq.json: none of its 0 example\(s\) gives a training feature"):
    train_and_evaluate(config("squad_v1", bert, tmp_path / "sq.json", tmp_path / "sq.json"), tmp_path / "e")
  assert not (tmp_path / "e").exists() or not list((tmp_path / "e").iterdir())
  dev = write_sst2(tmp_path / "dev.tsv", 8, 1)
  train_and_evaluate(config("glue_sst2", bert, train, dev, num_epochs=1.0), tmp_path / "d")
  pretraining = tmp_path / "pretraining"
  (pretraining / "checkpoints").mkdir(parents=True)
  with pytest.raises(InputError, match="holds checkpoints but no task.json: not a fine-tuning workdir"):
    train_and_evaluate(config("glue_sst2", bert, train, dev), pretraining)
  assert [p.name for p in pretraining.iterdir()] == ["checkpoints"]
  with pytest.raises(InputError, match="another task"):
    train_and_evaluate(config("glue_mrpc", bert, write_mrpc(tmp_path / "m.tsv", 8, 0), write_mrpc(tmp_path / "n.tsv", 8, 0)),
                       tmp_path / "d")


def test_sweep_reports_the_best_point(bert, tmp_path):
  from flaxbert.finetune.sweep import run_sweep  # pylint: disable=import-outside-toplevel
  c = config("glue_sst2", bert, write_sst2(tmp_path / "t.tsv", 48, 0), write_sst2(tmp_path / "d.tsv", 16, 1))
  c.sweep.learning_rates, c.sweep.batch_sizes, c.sweep.num_epochs = (3e-3, 1e-7), (8,), (2.0,)
  summary = run_sweep(c, tmp_path / "sweep")
  assert [p["name"] for p in summary["points"]] == ["lr0.003_bs8_ep2", "lr1e-07_bs8_ep2"]
  assert summary["metric"] == "accuracy"
  assert summary["best"]["results"]["accuracy"] == max(p["results"]["accuracy"] for p in summary["points"])
  assert json.loads((tmp_path / "sweep" / "sweep_results.json").read_text())["best"]["name"] == summary["best"]["name"]


def test_extractive_summarization_trained_and_unsupervised(bert, tmp_path):
  from finetune_fixtures import write_summaries  # pylint: disable=import-outside-toplevel
  train, dev = write_summaries(tmp_path / "t.jsonl", 64, 0), write_summaries(tmp_path / "d.jsonl", 16, 1)
  c = config("summarization", bert, train, dev, train_split="train", eval_split="train", summary_sentences=2,
             num_epochs=20.0)
  results = train_and_evaluate(c, tmp_path / "trained")
  assert set(results) == {"rouge1", "rouge2", "rougeL"} and all(0 <= v <= 100 for v in results.values())
  curve = losses(tmp_path / "trained")
  assert np.mean(curve[-3:]) < np.mean(curve[:3]) * 0.8, curve
  summaries = [json.loads(l)["prediction"] for l in (tmp_path / "trained" / "predictions.jsonl").read_text().splitlines()]
  assert len(summaries) == 16 and all(summaries)
  with pytest.raises(InputError, match="has no transformers class to export to"):  # inter-sentence layers
    export_hf(tmp_path / "trained", tmp_path / "hf")
  assert not (tmp_path / "hf").exists()
  c.train_path = None  # no training data: sentences ranked by the pretrained encoder's centroid
  unsupervised = train_and_evaluate(c, tmp_path / "unsupervised")
  assert set(unsupervised) == {"rouge1", "rouge2", "rougeL"}
  assert json.loads((tmp_path / "unsupervised" / "eval_results.json").read_text()) == unsupervised


def test_encoder_weights_from_every_checkpoint_kind(tmp_path):
  """HF, TF1 and flaxbert checkpoints give the task model the same encoder; heads are dropped;
  a headless checkpoint without a pooler leaves the task's pooler to its fresh init."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  from finetune_fixtures import WORDS, tiny_bert_config  # pylint: disable=import-outside-toplevel
  from flaxbert.interop.pretrained import load  # pylint: disable=import-outside-toplevel
  from flaxbert.models.task_heads import BertForTask, encoder_weights  # pylint: disable=import-outside-toplevel
  from flaxbert.models.weights import merge  # pylint: disable=import-outside-toplevel
  model = BertForTask(tiny_bert_config(len(WORDS)), "sequence", 3)
  batch = {k: np.zeros((1, 8), np.int32) for k in ("input_ids", "segment_ids", "input_mask", "position_ids")}
  fresh = nn.unbox(model.init(jax.random.key(0), dict(batch, cls_positions=np.zeros((1, 2), np.int32)))["params"])
  got = {}
  for fmt in ("hf", "tf1", "flaxbert"):
    loaded = load(write_pretrained(tmp_path / fmt, fmt))
    got[fmt] = merge(fresh, encoder_weights(fresh, loaded.params, fmt))
  for fmt in ("tf1", "flaxbert"):
    for x, y in zip(jax.tree_util.tree_leaves(got[fmt]), jax.tree_util.tree_leaves(got["hf"])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  hf = load(tmp_path / "hf").params
  np.testing.assert_array_equal(got["hf"]["bert"]["pooler"]["dense"]["kernel"], hf["bert"]["pooler"]["dense"]["kernel"])
  np.testing.assert_array_equal(got["hf"]["classifier"]["kernel"], fresh["classifier"]["kernel"])
  headless = load(write_pretrained(tmp_path / "headless", "hf", heads=False)).params
  del headless["bert"]["pooler"]
  merged = merge(fresh, encoder_weights(fresh, headless, "headless"))
  np.testing.assert_array_equal(merged["bert"]["pooler"]["dense"]["kernel"], fresh["bert"]["pooler"]["dense"]["kernel"])
  wrong = jax.tree_util.tree_map(lambda x: x, hf)
  wrong["bert"]["embeddings"]["word_embeddings"]["embedding"] = np.zeros((7, 32), np.float32)
  with pytest.raises(InputError, match=r"wrong: bert/embeddings/word_embeddings/embedding has shape \(7, 32\), "
                                       r"expected \(\d+, 32\); the checkpoint's vocab_size is 7"):
    encoder_weights(fresh, wrong, "wrong")


def test_embed_bad_arguments_are_named(bert, tmp_path):
  from flaxbert.finetune.embed import Embedder, read_lines  # pylint: disable=import-outside-toplevel
  bad = tmp_path / "s.txt"
  bad.write_bytes(b"w1 w2 .\nw3 \xff .\n")
  with pytest.raises(InputError, match=r"s.txt:2: expected UTF-8 text"):
    read_lines(bad)
  with pytest.raises(InputError, match="max_seq_length: expected at least 3"):
    Embedder(bert, max_seq_length=0)
  with pytest.raises(InputError, match="batch_size: expected a positive integer, got -1"):
    Embedder(bert, batch_size=-1)
