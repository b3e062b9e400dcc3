"""Weights in and out: exact round trips, TF1 names, HF layouts, and bad sources."""
import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import flaxbert
from conftest import make_batch, random_params
from flaxbert.errors import InputError
from flaxbert.interop import hf
from flaxbert.interop.pretrained import convert, detect, load
from flaxbert.models.pretraining import BertEncoder, build_model


def assert_same_params(a, b):
  fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (path, x), (_, y) in zip(fa, fb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), jax.tree_util.keystr(path)  # bit for bit


@pytest.mark.parametrize("fmt", ["flaxbert", "hf", "tf1"])
def test_round_trip_is_exact(tmp_path, tiny_config, tiny_params, fmt):
  # gelu_tanh: the one GELU that all three config dialects can express (the original's "gelu").
  tiny_model = build_model(tiny_config.replace(hidden_act="gelu_tanh", layer_norm_eps=1e-12))
  flaxbert.save_pretrained(tmp_path / fmt, tiny_model, tiny_params, format=fmt)
  assert detect(tmp_path / fmt) == fmt
  model, params = flaxbert.from_pretrained(tmp_path / fmt)
  assert model == tiny_model  # the config too
  assert_same_params(params, tiny_params)


@pytest.mark.parametrize("fmt", ["flaxbert", "hf"])
def test_round_trip_bfloat16_and_headless(tmp_path, tiny_config, fmt):
  model = BertEncoder(tiny_config.replace(param_dtype="bfloat16"))
  params = random_params(model)
  assert params["bert"]["pooler"]["dense"]["kernel"].dtype == ml_dtypes.bfloat16
  flaxbert.save_pretrained(tmp_path / "m", model, params, format=fmt)
  model2, params2 = flaxbert.from_pretrained(tmp_path / "m")
  assert isinstance(model2, BertEncoder) and model2.config.param_dtype == "bfloat16"
  assert_same_params(params2, params)


def test_conversion_chain_hf_tf1_flaxbert_is_exact(tmp_path, tiny_model, tiny_params):
  flaxbert.save_pretrained(tmp_path / "hf", tiny_model, tiny_params, format="hf")
  (tmp_path / "hf" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
  convert(tmp_path / "hf", tmp_path / "tf", "tf1")
  convert(tmp_path / "tf", tmp_path / "fb", "flaxbert")
  convert(tmp_path / "fb", tmp_path / "hf2", "hf")
  assert (tmp_path / "hf2" / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
  assert_same_params(load(tmp_path / "hf2").params, tiny_params)
  a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_tf1_checkpoint_with_original_names_and_optimizer_slots(tmp_path, tiny_model, tiny_params, tiny_config):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  flaxbert.save_pretrained(tmp_path / "tf", tiny_model, tiny_params, format="tf1")
  reader = tf.train.load_checkpoint(str(tmp_path / "tf" / "bert_model.ckpt"))
  shapes = reader.get_variable_to_shape_map()
  h, v = tiny_config.hidden_size, tiny_config.vocab_size
  assert shapes["bert/embeddings/word_embeddings"] == [v, h]
  assert shapes["bert/encoder/layer_0/attention/self/query/kernel"] == [h, h]
  assert shapes["bert/encoder/layer_1/attention/output/dense/kernel"] == [h, h]
  assert shapes["bert/encoder/layer_0/intermediate/dense/kernel"] == [h, 4 * h]
  assert shapes["bert/encoder/layer_0/output/LayerNorm/gamma"] == [h]
  assert shapes["cls/predictions/output_bias"] == [v]
  assert shapes["cls/seq_relationship/output_weights"] == [2, h]
  # TF layout is [in, out]: the query kernel is flaxbert's [H, N, D] kernel flattened, untransposed.
  np.testing.assert_array_equal(reader.get_tensor("bert/encoder/layer_0/attention/self/query/kernel"),
                                tiny_params["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"].reshape(h, h))
  np.testing.assert_array_equal(reader.get_tensor("cls/seq_relationship/output_weights"),
                                tiny_params["cls"]["seq_relationship"]["kernel"].T)
  # A checkpoint as run_pretraining.py leaves it: Adam slots and global_step beside every variable.
  tensors = {k: reader.get_tensor(k) for k in shapes}
  for k in list(tensors):
    tensors[f"{k}/adam_m"] = np.zeros_like(tensors[k])
    tensors[f"{k}/adam_v"] = np.ones_like(tensors[k])
  tensors["global_step"] = np.array(1000, np.int64)
  (tmp_path / "orig").mkdir()
  shutil.copy(tmp_path / "tf" / "bert_config.json", tmp_path / "orig")
  keys = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=str(tmp_path / "orig" / "model.ckpt-1000"), tensor_names=keys,
                    shape_and_slices=[""] * len(keys), tensors=[tf.constant(tensors[k]) for k in keys])
  model, params = flaxbert.from_pretrained(tmp_path / "orig")
  assert_same_params(params, tiny_params)
  batch = make_batch(tiny_config)
  # gelu (exact) is written as the original's "gelu", which reads back as its tanh approximation.
  assert model.config.hidden_act == "gelu_tanh"
  out = model.apply({"params": params}, **batch)
  ref = build_model(tiny_config.replace(hidden_act="gelu_tanh")).apply({"params": tiny_params}, **batch)
  np.testing.assert_array_equal(out.mlm_logits, ref.mlm_logits)
  np.testing.assert_array_equal(out.nsp_logits, ref.nsp_logits)


def test_hf_import_accepts_real_checkpoint_variants(tmp_path, tiny_model, tiny_params, caplog):
  flaxbert.save_pretrained(tmp_path / "hf", tiny_model, tiny_params, format="hf")
  tensors = load_file(tmp_path / "hf" / "model.safetensors")
  # Old-style LayerNorm names, the tied decoder copy, the position_ids buffer, a classifier head.
  variant = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in tensors.items()}
  variant["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
  variant["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
  variant["bert.embeddings.position_ids"] = np.arange(64)[None]
  variant["classifier.weight"] = np.zeros((3, 128), np.float32)
  save_file(variant, tmp_path / "hf" / "model.safetensors")
  with caplog.at_level("WARNING", logger="flaxbert"):
    _, params = flaxbert.from_pretrained(tmp_path / "hf")
  assert "dropped 1 tensor(s) of other heads: classifier.weight" in caplog.text
  assert_same_params(params, tiny_params)
  # Sharded weights with an index file.
  (tmp_path / "hf" / "model.safetensors").unlink()
  keys = sorted(tensors)
  save_file({k: tensors[k] for k in keys[:10]}, tmp_path / "hf" / "model-00001-of-00002.safetensors")
  save_file({k: tensors[k] for k in keys[10:]}, tmp_path / "hf" / "model-00002-of-00002.safetensors")
  index = {"weight_map": {k: f"model-0000{1 if i < 10 else 2}-of-00002.safetensors" for i, k in enumerate(keys)}}
  (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps(index))
  assert_same_params(flaxbert.from_pretrained(tmp_path / "hf")[1], tiny_params)


def test_hf_mlm_only_checkpoint_keeps_its_head_and_gets_a_fresh_pooler_and_nsp(tmp_path, tiny_model, tiny_params,
                                                                                 caplog):
  """transformers' BertForMaskedLM (run_mlm.py) saves the MLM head without the pooler and NSP head."""
  flaxbert.save_pretrained(tmp_path / "hf", tiny_model, tiny_params, format="hf")
  tensors = load_file(tmp_path / "hf" / "model.safetensors")
  mlm_only = {k: v for k, v in tensors.items() if not k.startswith(("bert.pooler.", "cls.seq_relationship."))}
  save_file(mlm_only, tmp_path / "hf" / "model.safetensors")
  with caplog.at_level("WARNING", logger="flaxbert"):
    model, params = flaxbert.from_pretrained(tmp_path / "hf")
  assert "has no bert/pooler or cls/seq_relationship (an MLM-only checkpoint" in caplog.text
  fresh = flaxbert.init_params(build_model(model.config), seed=0)
  for part in ("bert", "cls"):
    kept = {k: v for k, v in params[part].items() if k not in ("pooler", "seq_relationship")}
    assert_same_params(kept, {k: tiny_params[part][k] for k in kept})
  assert_same_params(params["bert"]["pooler"], fresh["bert"]["pooler"])
  assert_same_params(params["cls"]["seq_relationship"], fresh["cls"]["seq_relationship"])
  batch = make_batch(model.config)
  np.testing.assert_array_equal(model.apply({"params": params}, **batch).mlm_logits,
                                tiny_model.apply({"params": tiny_params}, **batch).mlm_logits)
  # An NSP head without the pooler it reads is not a layout anything saves.
  save_file({k: v for k, v in tensors.items() if not k.startswith("bert.pooler.")}, tmp_path / "hf" / "model.safetensors")
  with pytest.raises(InputError, match="has an NSP head .* but no pooler"):
    flaxbert.from_pretrained(tmp_path / "hf")


def test_tf1_squad_checkpoint_drops_its_qa_layer(tmp_path, tiny_config, tiny_params, caplog):
  """run_squad.py saves its output layer as cls/squad/output_weights|bias beside a headless BERT."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  flaxbert.save_pretrained(tmp_path / "tf", build_model(tiny_config), tiny_params, format="tf1")
  reader = tf.train.load_checkpoint(str(tmp_path / "tf" / "bert_model.ckpt"))
  tensors = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.startswith("bert/")}
  tensors["cls/squad/output_weights"] = np.ones((2, tiny_config.hidden_size), np.float32)
  tensors["cls/squad/output_bias"] = np.zeros((2,), np.float32)
  (tmp_path / "squad").mkdir()
  shutil.copy(tmp_path / "tf" / "bert_config.json", tmp_path / "squad")
  keys = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=str(tmp_path / "squad" / "model.ckpt-88"), tensor_names=keys,
                    shape_and_slices=[""] * len(keys), tensors=[tf.constant(tensors[k]) for k in keys])
  with caplog.at_level("WARNING", logger="flaxbert"):
    model, params = flaxbert.from_pretrained(tmp_path / "squad")
  assert isinstance(model, BertEncoder) and model.add_pooling_layer
  assert "dropped 2 tensor(s) of other heads: cls/squad/output_bias, cls/squad/output_weights" in caplog.text
  assert_same_params(params, {"bert": tiny_params["bert"]})


def test_untied_decoder_is_refused(tmp_path, tiny_model, tiny_params):
  flaxbert.save_pretrained(tmp_path / "hf", tiny_model, tiny_params, format="hf")
  tensors = load_file(tmp_path / "hf" / "model.safetensors")
  tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"] + 1
  save_file(tensors, tmp_path / "hf" / "model.safetensors")
  with pytest.raises(InputError, match="decoder.weight differs from the word embeddings"):
    flaxbert.from_pretrained(tmp_path / "hf")


def test_pytorch_bin_import(tmp_path, tiny_model, tiny_params):
  torch = pytest.importorskip("torch")
  flaxbert.save_pretrained(tmp_path / "hf", tiny_model, tiny_params, format="hf")
  tensors = load_file(tmp_path / "hf" / "model.safetensors")
  (tmp_path / "hf" / "model.safetensors").unlink()
  torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, tmp_path / "hf" / "pytorch_model.bin")
  assert_same_params(flaxbert.from_pretrained(tmp_path / "hf")[1], tiny_params)


def test_save_refuses_to_clobber_and_failures_leave_nothing(tmp_path, tiny_model, tiny_params, monkeypatch):
  dst = tmp_path / "out"
  dst.mkdir()
  (dst / "precious.txt").write_text("keep me")
  with pytest.raises(InputError, match="exists and is not empty"):
    flaxbert.save_pretrained(dst, tiny_model, tiny_params, format="hf")
  # overwrite replaces a model folder only, never other files (nor a training workdir).
  with pytest.raises(InputError, match="exists and is not a flaxbert, HF or TF1 model folder"):
    flaxbert.save_pretrained(dst, tiny_model, tiny_params, format="hf", overwrite=True)
  assert (dst / "precious.txt").read_text() == "keep me"
  (dst / "precious.txt").unlink()
  flaxbert.save_pretrained(dst, tiny_model, tiny_params, format="tf1")
  old = sorted(p.name for p in dst.iterdir())

  def fail(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(hf, "write", fail)
  with pytest.raises(OSError, match="disk full"):
    flaxbert.save_pretrained(dst, tiny_model, tiny_params, format="hf", overwrite=True)
  assert sorted(p.name for p in dst.iterdir()) == old  # the old export is untouched
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left behind
  monkeypatch.undo()
  flaxbert.save_pretrained(dst, tiny_model, tiny_params, format="hf", overwrite=True)
  assert not (dst / "bert_config.json").exists() and (dst / "model.safetensors").is_file()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_convert_refuses_to_write_over_its_source_or_a_workdir(tmp_path, tiny_model, tiny_params):
  (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
  src = flaxbert.save_pretrained(tmp_path / "src", tiny_model, tiny_params, format="hf", vocab=tmp_path / "vocab.txt")
  for dst in (src, tmp_path):  # the source itself, or a folder holding it
    with pytest.raises(InputError, match="holds the input .*src; writing there would delete what is read"):
      convert(src, dst, "flaxbert", overwrite=True)
  assert (src / "model.safetensors").is_file()
  # A vocabulary longer than the embedding table is not this model's (its extra ids would read NaN).
  (src / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(tiny_model.config.vocab_size + 1)) + "\n")
  with pytest.raises(InputError, match=rf"vocab.txt: {tiny_model.config.vocab_size + 1} tokens, but the "
                                       rf"model's vocab_size is {tiny_model.config.vocab_size}"):
    load(src)
  workdir = tmp_path / "workdir"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "flaxbert_config.json").write_text((src / "config.json").read_text())
  with pytest.raises(InputError, match=r"a training workdir is never replaced"):
    convert(src, workdir, "flaxbert", overwrite=True)


def test_save_checks_the_params_tree(tmp_path, tiny_model, tiny_params):
  broken = jax.tree_util.tree_map(lambda x: x, tiny_params)
  del broken["cls"]["seq_relationship"]["bias"]
  with pytest.raises(InputError, match=r"params: missing cls/seq_relationship/bias \(expected shape \(2,\)\)"):
    flaxbert.save_pretrained(tmp_path / "x", tiny_model, broken, format="hf")
  with pytest.raises(InputError, match="format must be one of"):
    flaxbert.save_pretrained(tmp_path / "x", tiny_model, tiny_params, format="onnx")
  assert not (tmp_path / "x").exists()
