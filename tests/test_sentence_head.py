"""The sentence-scoring head (extractive summarization): pooling, inter-sentence layers, masking."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from flaxbert.errors import InputError
from flaxbert.models.config import BertConfig
from flaxbert.models.encoder import BertModel
from flaxbert.models.task_heads import BertForTask, sinusoidal_positions

CFG = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                 max_position_embeddings=32)


def batch():
  """Two documents: `[CLS] 5 6 [SEP] [CLS] 7 8 9 [SEP]` and one sentence; 3 slots."""
  ids = np.array([[2, 5, 6, 3, 2, 7, 8, 9, 3, 0], [2, 5, 3, 0, 0, 0, 0, 0, 0, 0]], np.int32)
  return {"input_ids": ids, "segment_ids": np.array([[0] * 4 + [1] * 5 + [0], [0] * 10], np.int32),
          "input_mask": (ids > 0).astype(np.int32),
          "cls_positions": np.array([[0, 4, 0], [0, 0, 0]], np.int32),
          "sentence_ids": np.array([[-1, 0, 0, -1, -1, 1, 1, 1, -1, -1], [-1, 0, -1] + [-1] * 7], np.int32),
          "sentence_mask": np.array([[1, 1, 0], [1, 0, 0]], np.int32)}


def init(model, b):
  return nn.unbox(model.init(jax.random.key(0), b)["params"])


def test_inter_sentence_layers_are_encoder_layers_and_the_linear_scorer_has_none():
  b = batch()
  params = init(BertForTask(CFG, "sentences", 1, "cls", 2), b)
  assert sorted(params) == ["bert", "classifier", "inter_sentence_0", "inter_sentence_1"]
  layer = params["inter_sentence_1"]
  assert layer["intermediate"]["kernel"].shape == (16, 24) and layer["output"]["kernel"].shape == (24, 16)
  assert params["classifier"]["kernel"].shape == (16, 1)
  assert sorted(init(BertForTask(CFG, "sentences", 1, "cls", 0), b)) == ["bert", "classifier"]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_linear_scorer_reads_each_sentence_as_pooling_says(pooling):
  b = batch()
  model = BertForTask(CFG, "sentences", 1, pooling, 0)
  params = init(model, b)
  scores = np.asarray(model.apply({"params": params}, b)["scores"])
  hidden, _ = BertModel(CFG, add_pooling_layer=False).apply({"params": params["bert"]}, b["input_ids"],
                                                             b["segment_ids"], b["input_mask"])
  hidden = np.asarray(hidden)
  if pooling == "cls":
    vectors = [hidden[0, 0], hidden[0, 4], hidden[1, 0]]
  else:
    vectors = [hidden[0, 1:3].mean(0), hidden[0, 5:8].mean(0), hidden[1, 1]]
  head = params["classifier"]
  want = [float(v @ np.asarray(head["kernel"])[:, 0] + np.asarray(head["bias"])[0]) for v in vectors]
  np.testing.assert_allclose([scores[0, 0], scores[0, 1], scores[1, 0]], want, rtol=1e-5, atol=1e-5)


def test_empty_slots_do_not_change_the_scores_of_real_sentences():
  b = batch()
  model = BertForTask(CFG, "sentences", 1, "cls", 2)
  params = init(model, b)
  before = np.asarray(model.apply({"params": params}, b)["scores"])
  other = dict(b, cls_positions=np.array([[0, 4, 6], [0, 1, 2]], np.int32))  # real states in the empty slots
  after = np.asarray(model.apply({"params": params}, other)["scores"])
  real = b["sentence_mask"] > 0
  np.testing.assert_allclose(after[real], before[real], rtol=1e-6)
  fewer = dict(b, cls_positions=b["cls_positions"][:, :2], sentence_mask=b["sentence_mask"][:, :2])
  two_slots = np.asarray(model.apply({"params": params}, fewer)["scores"])  # no empty slot to attend to
  np.testing.assert_allclose(two_slots[real[:, :2]], before[real], rtol=1e-5)


def test_sinusoidal_positions_and_bad_settings():
  table = sinusoidal_positions(4, 6)
  assert table.shape == (4, 6) and table.dtype == np.float32
  np.testing.assert_allclose(table[0], [0, 1, 0, 1, 0, 1], atol=1e-7)
  np.testing.assert_allclose(table[3, :2], [np.sin(3.0), np.cos(3.0)], rtol=1e-6)
  assert sinusoidal_positions(3, 5).shape == (3, 5)  # odd width
  with pytest.raises(InputError, match="pooling"):
    init(BertForTask(CFG, "sentences", 1, "max", 0), batch())
  with pytest.raises(InputError, match="inter_sentence_layers"):
    init(BertForTask(CFG, "sentences", 1, "cls", -1), batch())
