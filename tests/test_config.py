"""BertConfig: validation, named sizes, and the three JSON dialects."""
import json

import pytest

from flaxbert.errors import InputError
from flaxbert.models.config import SIZES, BertConfig, read_json


def test_named_sizes():
  expected = {"tiny": (2, 128, 2, 512), "mini": (4, 256, 4, 1024), "small": (4, 512, 8, 2048),
              "medium": (8, 512, 8, 2048), "base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}
  assert set(SIZES) == set(expected)
  for size, (layers, hidden, heads, inter) in expected.items():
    c = BertConfig.from_size(size)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
        layers, hidden, heads, inter)
    assert c.vocab_size == 30522
  assert BertConfig.from_size("tiny", vocab_size=99).vocab_size == 99
  with pytest.raises(InputError, match="unknown BERT size 'huge'"):
    BertConfig.from_size("huge")


@pytest.mark.parametrize("field,value,message", [
    ("num_attention_heads", 5, "hidden_size \\(768\\) must be divisible by num_attention_heads \\(5\\)"),
    ("hidden_act", "gelu_fast", "hidden_act must be one of"),
    ("vocab_size", 0, "vocab_size must be a positive integer"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob must be a number in \\[0, 1\\)"),
    ("dtype", "int8", "dtype must be one of"),
    ("layer_norm_eps", -1.0, "layer_norm_eps must be a positive number"),
])
def test_validation(field, value, message):
  with pytest.raises(InputError, match=message):
    BertConfig(**{field: value})


def test_flaxbert_dict_round_trip():
  c = BertConfig.from_size("mini", hidden_act="gelu_tanh", dtype="bfloat16", layer_norm_eps=1e-5)
  assert BertConfig.from_dict(c.to_dict()) == c
  with pytest.raises(InputError, match="unknown BertConfig field"):
    BertConfig.from_dict({**c.to_dict(), "num_layers": 3})


def test_original_json_dialect():
  # google-research/bert's bert_config.json for BERT-Base, Uncased, verbatim.
  original = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
              "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 12,
              "type_vocab_size": 2, "vocab_size": 30522}
  c = BertConfig.from_original_dict(original)
  assert c.hidden_act == "gelu_tanh"  # the original code's gelu is the tanh approximation
  assert c == BertConfig.from_size("base", hidden_act="gelu_tanh")
  assert c.to_original_dict() == original
  with pytest.raises(InputError, match="missing field"):
    BertConfig.from_original_dict({k: v for k, v in original.items() if k != "hidden_size"})


def test_hf_json_dialect():
  c = BertConfig.from_size("small", layer_norm_eps=1e-7)
  hf = c.to_hf_dict()
  assert hf["model_type"] == "bert" and hf["hidden_act"] == "gelu"
  assert BertConfig.from_hf_dict(hf) == c
  tanh = BertConfig.from_size("small", hidden_act="gelu_tanh")
  assert BertConfig.from_hf_dict(tanh.to_hf_dict()).hidden_act == "gelu_tanh"
  with pytest.raises(InputError, match="model_type is 'roberta'"):
    BertConfig.from_hf_dict({**hf, "model_type": "roberta"})
  with pytest.raises(InputError, match="position_embedding_type 'relative_key'"):
    BertConfig.from_hf_dict({**hf, "position_embedding_type": "relative_key"})


def test_hf_config_of_transformers_round_trips(tmp_path):
  transformers = pytest.importorskip("transformers")
  c = BertConfig.from_size("tiny", hidden_act="gelu_tanh", layer_norm_eps=1e-6)
  (tmp_path / "config.json").write_text(json.dumps(c.to_hf_dict()))
  t = transformers.BertConfig.from_pretrained(tmp_path)
  assert (t.hidden_size, t.num_hidden_layers, t.hidden_act, t.layer_norm_eps) == (128, 2, "gelu_new", 1e-6)
  t.save_pretrained(tmp_path / "back")
  assert BertConfig.from_hf_dict(read_json(tmp_path / "back" / "config.json")) == c


def test_read_json_errors(tmp_path):
  with pytest.raises(InputError, match="file not found"):
    read_json(tmp_path / "nope.json")
  bad = tmp_path / "bad.json"
  bad.write_text('{"a": 1,\n "b": }')
  with pytest.raises(InputError, match="bad.json: not valid JSON .*line 2"):
    read_json(bad)
  bad.write_text("[1, 2]")
  with pytest.raises(InputError, match="expected a JSON object, got list"):
    read_json(bad)
