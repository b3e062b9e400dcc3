"""Encoder-decoder fine-tuning end to end (translation, abstractive summarization) on generated
data with tiny models: trains through the shared loop, scores with BLEU/chrF/ROUGE, resumes,
evaluates, generates line by line; the warm start lands the checkpoint's weights; bad input is named."""
import functools
import json
import logging
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from configs import finetune as finetune_config
from finetune_fixtures import STEMS, write_pretrained
from flaxbert import cli
from flaxbert.errors import InputError
from flaxbert.finetune.job import evaluate, generate_file, restore, train_and_evaluate
from flaxbert.finetune.tasks.registry import get_task
from flaxbert.interop.pretrained import load
from flaxbert.training import batching, optim


def sentences(n: int, seed: int, words=STEMS[:24]) -> list[list[str]]:
  rng = np.random.RandomState(seed)
  return [[words[rng.randint(len(words))] for _ in range(rng.randint(2, 6))] for _ in range(n)]


def write_parallel(directory: Path, name: str, n: int, seed: int) -> str:
  """Source w_i … → target: the words reversed, each renamed (w7 → v7): learnable by a tiny model."""
  rows = sentences(n, seed)
  (directory / f"{name}.src").write_text("".join(" ".join(r) + "\n" for r in rows))
  (directory / f"{name}.tgt").write_text("".join(" ".join("v" + w[1:] for w in reversed(r)) + "\n" for r in rows))
  return f"{directory / name}.src|{directory / name}.tgt"


def losses(workdir: Path) -> list[float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if "loss" in r]


def tiny(task: str, **overrides):
  c = finetune_config.get_config(f"{task},tiny")
  c.optim.learning_rate, c.optim.warmup_proportion, c.eval_every_epoch = 3e-3, 0.0, False
  c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = 0.0
  for key, value in overrides.items():
    node, *path = [c, *key.split(".")]
    for name in path[:-1]:
      node = node[name]
    node[path[-1]] = value
  return c


@pytest.fixture(scope="module")
def translation(tmp_path_factory):
  """A translation workdir trained from random init with a joint sentencepiece vocabulary."""
  tmp_path = tmp_path_factory.mktemp("translation")
  train, dev = write_parallel(tmp_path, "train", 64, 0), write_parallel(tmp_path, "dev", 12, 1)
  c = tiny("translation", warm_start="random", train_path=train, eval_path=dev, num_epochs=3.0, vocab_size=30,
           length_bucket=16)
  w = tmp_path / "w"
  return c, w, train_and_evaluate(c, w)


def test_translation_from_random_init_trains_scores_resumes_and_generates(translation, tmp_path, capsys):
  c, w, results = translation
  assert set(results) == {"bleu", "bleu_uncased", "chrf"} and all(0 <= v <= 100 for v in results.values())
  first, *_, last = losses(w)
  assert last < first
  hyps = (w / "hypotheses.txt").read_text().splitlines()
  assert len(hyps) == 12
  record = json.loads((w / "task.json").read_text())
  assert record["kind"] == "seq2seq" and record["settings"]["warm_start"] == "random"
  assert record["model"]["hidden_size"] == 128 and record["defaults"]["beam_size"] == 2
  assert (w / "spm.model").is_file()  # the joint vocabulary travels with the workdir
  assert json.loads((w / "eval_results.json").read_text()) == results
  # a finished run, rerun: nothing retrained, the restored model scores the same
  logged = len(losses(w))
  assert train_and_evaluate(c, w) == results and len(losses(w)) == logged
  assert evaluate(c, w) == results
  [out] = (w / "evaluations").iterdir()  # beside the run's own results and hypotheses
  assert json.loads((out / "eval_results.json").read_text()) == results
  assert (out / "hypotheses.txt").read_text() == (w / "hypotheses.txt").read_text()
  # generation: one line per input line, blank lines kept; the same text as evaluation's
  src = tmp_path / "in.txt"
  dev_sources = Path(c.eval_path.split("|")[0]).read_text().splitlines()
  src.write_text(dev_sources[0] + "\n\n" + dev_sources[1] + "\n")
  assert generate_file(w, src, tmp_path / "out.txt") == 3
  assert (tmp_path / "out.txt").read_text().splitlines() == [hyps[0], "", hyps[1]]
  assert cli.main(["generate", "--model", str(w), "--input", str(src), "--output", str(tmp_path / "cli.txt"),
                   "--beam_size", "1"]) == 0
  assert "wrote 3 lines" in capsys.readouterr().out
  assert len((tmp_path / "cli.txt").read_text().splitlines()) == 3


def test_export_loads_in_transformers_with_the_same_logits_and_greedy_output(translation, tmp_path):
  transformers = pytest.importorskip("transformers", reason="needs transformers (pip install -e .[test])")
  torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
  _, w, _ = translation
  assert cli.main(["convert", str(w), str(tmp_path / "hf"), "--to", "hf"]) == 0
  hf, info = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  task, session, params = restore(w)
  s = task.bundle(session)
  src = s.sources(["w1 w2 w3", "w4 w5"])
  t = s.tokenizer
  tgt = np.asarray([[t.cls_id, 7, 8, 9], [t.cls_id, 10, 11, t.pad_id]], np.int32)
  tgt_mask = (tgt != t.pad_id).astype(np.int32)
  got = s.model.apply({"params": params}, src["source_ids"], src["source_mask"], tgt, tgt_mask)
  as_torch = lambda x: torch.from_numpy(np.asarray(x, np.int64))  # noqa: E731
  with torch.no_grad():
    want = hf.eval()(input_ids=as_torch(src["source_ids"]), attention_mask=as_torch(src["source_mask"]),
                     decoder_input_ids=as_torch(tgt), decoder_attention_mask=as_torch(tgt_mask)).logits.numpy()
    hf_ids = hf.generate(input_ids=as_torch(src["source_ids"]), attention_mask=as_torch(src["source_mask"]),
                         num_beams=1, do_sample=False)
  np.testing.assert_allclose(np.asarray(got)[tgt_mask == 1], want[tgt_mask == 1], atol=1e-4, rtol=0)
  ours = s.generate(params, ["w1 w2 w3", "w4 w5"], 8, 1, 0.0)
  assert ours == [t.decode(row[1:]) for row in hf_ids.numpy()]


def test_summarization_warm_start_lands_the_checkpoint_and_scores_rouge(tmp_path, caplog):
  bert = write_pretrained(tmp_path / "bert", "hf")
  rows = sentences(24, 2)
  train = tmp_path / "train.jsonl"
  train.write_text("".join(json.dumps({"text": [" ".join(r), "w1 w2 ."], "summary": " ".join(r[:2])}) + "\n"
                           for r in rows) + json.dumps({"text": "w3 " * 40, "summary": "w3"}) + "\n")
  dev = tmp_path / "dev.jsonl"
  dev.write_text("".join(json.dumps({"text": " ".join(r), "s1": r[0], "s2": [" ".join(r[:2])]}) + "\n"
                         for r in rows[:5]))
  c = tiny("summarization_abstractive", init=str(bert), train_path=str(train), eval_path=str(dev),
           source_field="text", target_fields="summary", eval_target_fields="s1,s2",
           **{"optim.learning_rate": 1e-30, "optim.weight_decay": 0.0}, max_source_length=16, max_target_length=8)
  w = tmp_path / "w"
  with caplog.at_level(logging.WARNING, logger="flaxbert"):
    results = train_and_evaluate(c, w)
  assert set(results) == {"rouge1", "rouge2", "rougeL"}
  # summarization cuts a long training source (cut_long_sources) rather than dropping the pair
  assert "train.jsonl: 1 source(s) over 14 wordpieces cut" in caplog.text and "skipped" not in caplog.text
  # a learning rate of ~0: the checkpoint's weights, as the warm start placed them (bert2bert)
  _, _, params = restore(w)
  bert_params = load(bert).params["bert"]
  same = functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-6)
  same(params["encoder"]["embeddings"]["word_embeddings"]["embedding"],
       bert_params["embeddings"]["word_embeddings"]["embedding"])
  same(params["decoder"]["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"],
       bert_params["encoder"]["layer_0"]["attention"]["query"]["kernel"])
  same(params["decoder"]["cls"]["predictions"]["bias"], load(bert).params["cls"]["predictions"]["bias"])


def test_fresh_weights_learn_at_fresh_lr_scale_times_the_rate():
  grads = {"encoder": {"kernel": np.ones(3, np.float32)},
           "decoder": {"bert": {"layer_0": {"crossattention": {"kernel": np.ones(3, np.float32)},
                                            "attention": {"kernel": np.ones(3, np.float32)}}}}}
  with_head = types.SimpleNamespace(params={"cls": {"predictions": {}}})
  for mode, scale, fresh in (("bert2bert", 10.0, ["crossattention"]), ("bert2rnd", 4.0, ["crossattention", "attention"]),
                             ("random", 10.0, [])):
    c = tiny("translation", warm_start=mode, fresh_lr_scale=scale,
             **{"optim.learning_rate": 1e-3, "optim.warmup_proportion": 0.0, "optim.weight_decay": 0.0})
    tx = get_task(c).optimizer(optim.resolve(c.optim, 10), with_head)
    updates, _ = tx.update(grads, tx.init(grads), grads)
    base = float(updates["encoder"]["kernel"][0])
    assert base < 0
    for name in ("crossattention", "attention"):
      got = float(updates["decoder"]["bert"]["layer_0"][name]["kernel"][0])
      np.testing.assert_allclose(got, base * (scale if name in fresh else 1.0), rtol=1e-6, err_msg=f"{mode} {name}")
  with pytest.raises(InputError, match="fresh_lr_scale: expected a positive number, got 0"):
    get_task(tiny("translation", warm_start="random", fresh_lr_scale=0)).check_config()


def test_bad_inputs_are_named(tmp_path):
  train = write_parallel(tmp_path, "train", 8, 0)
  with pytest.raises(InputError, match="warm_start: expected one of"):
    train_and_evaluate(tiny("translation", warm_start="bert2big", train_path=train), tmp_path / "a")
  with pytest.raises(InputError, match="init: required for warm_start='bert2bert'"):
    train_and_evaluate(tiny("translation", train_path=train), tmp_path / "b")
  with pytest.raises(InputError, match=r"missing\.src: no such file"):
    train_and_evaluate(tiny("translation", warm_start="random", train_path=f"{tmp_path}/missing.src|{tmp_path}/x"),
                       tmp_path / "c")
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"source": "a b", "target": "c"}) + "\n" + json.dumps({"source": "a", "tgt": "c"}) + "\n")
  with pytest.raises(InputError, match=r"bad.jsonl:2: field 'target': expected text or a list of texts \(no such"):
    train_and_evaluate(tiny("translation", warm_start="random", train_path=str(bad)), tmp_path / "d")
  with pytest.raises(InputError, match=r"num_epochs: expected a number > 0, got 0"):
    train_and_evaluate(tiny("translation", warm_start="random", train_path=train, num_epochs=0.0), tmp_path / "n")
  assert not (tmp_path / "n").exists()
  with pytest.raises(InputError, match=r"max_target_length: 999; expected 3 to the model's max_position_embeddings"):
    train_and_evaluate(tiny("translation", warm_start="random", train_path=train, max_target_length=999),
                       tmp_path / "e")
  with pytest.raises(InputError, match="not a fine-tuning workdir"):
    generate_file(tmp_path / "nothing", tmp_path / "train.src", tmp_path / "out.txt")


def test_grouped_batches_cover_each_example_once_with_similar_lengths():
  rng = np.random.RandomState(0)
  n, batch = 1000, 16
  keys = rng.randint(1, 60, n)
  arrays = {"x": np.arange(n), "mask": (np.arange(64)[None] < keys[:, None]).astype(np.int32)}
  per_epoch = batching.steps_per_epoch(n, batch)
  for epoch in (0, 1):
    seen, spreads = [], []
    for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
      b = batching.grouped_batch(arrays, step, batch, seed=3, keys=keys, window=10)
      rows = b["x"][b["example_mask"] == 1]
      seen.extend(rows.tolist())
      spreads.append(np.ptp(keys[rows]))
    assert sorted(seen) == list(range(n))  # every example once per epoch
    assert np.mean(spreads) < 0.25 * np.ptp(keys)  # random batches would span nearly the whole range
  again = batching.grouped_batch(arrays, 5, batch, seed=3, keys=keys, window=10)
  np.testing.assert_array_equal(again["x"], batching.grouped_batch(arrays, 5, batch, 3, keys, 10)["x"])
  assert not np.array_equal(again["x"], batching.grouped_batch(arrays, 5, batch, 4, keys, 10)["x"])
  trimmed = batching.trim(again, {"mask": ("mask",)}, 8)
  longest = again["mask"].sum(axis=1).max()
  assert trimmed["mask"].shape[1] == -(-longest // 8) * 8 and trimmed["mask"].sum() == again["mask"].sum()


def test_every_command_dispatches_on_the_recorded_kind(translation, tmp_path, capsys):
  """embed reads a seq2seq workdir's encoder; a task.json of flaxbert 0.1.0 (no kind) still evaluates
  and generates; predict goes through the family too."""
  c, w, results = translation
  sentences = tmp_path / "s.txt"
  sentences.write_text("w1 w2 w3\nw4 w5\n")
  assert cli.main(["embed", "--model", str(w), "--input", str(sentences), "--output", str(tmp_path / "v.npy")]) == 0
  vectors = np.load(tmp_path / "v.npy")
  assert vectors.shape == (2, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
  old = tmp_path / "old"
  shutil.copytree(w, old)
  record = json.loads((old / "task.json").read_text())
  (old / "task.json").write_text(json.dumps({  # as flaxbert 0.1.0 wrote it
      "task": record["task"], "state": {k: record["settings"][k] for k in ("warm_start", "init")},
      "model": record["model"], "max_source_length": record["settings"]["max_source_length"],
      "max_target_length": record["settings"]["max_target_length"]}))
  assert evaluate(c, old) == results
  src = tmp_path / "in.txt"
  src.write_text(Path(c.eval_path.split("|")[0]).read_text().splitlines()[0] + "\n")
  assert generate_file(old, src, tmp_path / "old.txt", beam_size=2) == 1
  assert (tmp_path / "old.txt").read_text() == (w / "hypotheses.txt").read_text().splitlines()[0] + "\n"
  assert cli.main(["predict", "--config", "finetune:translation,tiny", "--workdir", str(w), "--input", str(src),
                   "--output", str(tmp_path / "p.txt"), "--config.beam_size=2"]) == 0
  assert (tmp_path / "p.txt").read_text() == (tmp_path / "old.txt").read_text()
  # predict decodes with the lengths the model was trained with, as generate does; evaluate takes
  # the config's (longer out-of-domain text)
  other = tiny("translation", max_source_length=5, max_target_length=3)
  task, session, params = restore(w, other)
  assert task.bundle(session).max_target_length == 3
  task.predict_file(session, params, str(src), str(tmp_path / "q.txt"))
  assert (task.config.max_source_length, task.config.max_target_length) == (24, 16)


def test_sweep_runs_a_translation_config(tmp_path):
  from flaxbert.finetune.sweep import run_sweep  # pylint: disable=import-outside-toplevel
  train, dev = write_parallel(tmp_path, "train", 16, 0), write_parallel(tmp_path, "dev", 4, 1)
  c = tiny("translation", warm_start="random", train_path=train, eval_path=dev, vocab_size=24, beam_size=1)
  c.sweep.learning_rates, c.sweep.batch_sizes, c.sweep.num_epochs = (3e-3,), (8,), (1.0,)
  summary = run_sweep(c, tmp_path / "sweep")
  assert summary["metric"] == "bleu" and [p["name"] for p in summary["points"]] == ["lr0.003_bs8_ep1"]
  assert set(summary["best"]["results"]) == {"bleu", "bleu_uncased", "chrf"}
  assert json.loads((tmp_path / "sweep" / "lr0.003_bs8_ep1" / "task.json").read_text())["kind"] == "seq2seq"
