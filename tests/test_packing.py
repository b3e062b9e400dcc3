"""Sequence packing for fine-tuning: the plan, the layout, and outputs equal to one example a row."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finetune_fixtures import tiny_bert_config
from flaxbert.models.task_heads import BertForTask
from flaxbert.training import packing


def per_example(lengths, length: int, seed: int = 0) -> dict:
  """Padded per-example arrays as classification's featurize makes them ([CLS] … [SEP], 0/1 mask)."""
  rng = np.random.default_rng(seed)
  n = len(lengths)
  ids, segments, mask = (np.zeros((n, length), np.int32) for _ in range(3))
  for i, size in enumerate(lengths):
    ids[i, :size] = rng.integers(5, 60, size)
    ids[i, 0] = 2
    segments[i, size // 2:size] = 1
    mask[i, :size] = 1
  return {"input_ids": ids, "segment_ids": segments, "input_mask": mask,
          "label": rng.integers(0, 3, n).astype(np.int32)}


def test_plan_puts_every_example_once_within_the_limits():
  lengths = np.random.default_rng(1).integers(3, 40, 500)
  rows = packing.plan(lengths, 64, max_per_row=4, seed=3)
  assert sorted(np.concatenate(rows).tolist()) == list(range(500))
  assert all(lengths[r].sum() <= 64 and 1 <= len(r) <= 4 for r in rows)
  # best-fit decreasing is dense: over 90% of the tokens real (one example a row: 33%)
  assert lengths.sum() / (64 * len(rows)) > 0.9
  assert [r.tolist() for r in packing.plan(lengths, 64, 4, seed=3)] == [r.tolist() for r in rows]
  assert len(packing.plan(lengths, 64, 1)) == 500  # one a row: no packing
  with pytest.raises(ValueError, match=r"lengths must be 1…64, got 3…65"):
    packing.plan(np.array([3, 65]), 64, 4)


def test_pack_layout_and_unpack():
  arrays = per_example([5, 3, 7, 2], length=8)
  rows = [np.array([2]), np.array([0, 1]), np.array([3])]
  out = packing.pack(arrays, rows, max_per_row=3)
  np.testing.assert_array_equal(out["input_mask"][1], [1, 1, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(out["position_ids"][1], [0, 1, 2, 3, 4, 0, 1, 2])
  np.testing.assert_array_equal(out["input_ids"][1], np.concatenate([arrays["input_ids"][0, :5],
                                                                    arrays["input_ids"][1, :3]]))
  np.testing.assert_array_equal(out["segment_ids"][1], [0, 0, 1, 1, 1, 0, 1, 1])
  np.testing.assert_array_equal(out["cls_positions"][1], [0, 5, 0])
  np.testing.assert_array_equal(out["label_mask"], [[1, 0, 0], [1, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(out["example_index"], [[2, -1, -1], [0, 1, -1], [3, -1, -1]])
  np.testing.assert_array_equal(out["label"][1, :2], arrays["label"][:2])
  np.testing.assert_array_equal(out["input_mask"][2], [1, 1, 0, 0, 0, 0, 0, 0])
  logits = np.arange(3 * 3 * 2, dtype=np.float32).reshape(3, 3, 2)
  back = packing.unpack({"logits": logits}, out, [5, 3, 7, 2])["logits"]
  np.testing.assert_array_equal(back, logits[[1, 1, 0, 2], [0, 1, 0, 0]])
  with pytest.raises(ValueError, match="exactly once"):
    packing.pack(arrays, rows[:2], 3)
  with pytest.raises(ValueError, match="exactly once"):
    packing.unpack({"logits": logits}, out, [5, 3, 7, 2, 1])


def test_token_arrays_are_laid_out_along_the_row_and_come_back():
  arrays = per_example([5, 3, 7, 2], length=8)
  arrays["labels"] = np.where(arrays["input_mask"] == 1, np.arange(8)[None] + 10 * np.arange(4)[:, None], -1)
  rows = [np.array([2]), np.array([0, 1]), np.array([3])]
  out = packing.pack(arrays, rows, max_per_row=3, token_arrays={"labels": -1})
  assert out["labels"].shape == (3, 8)  # along the tokens, not [R, K, …]
  np.testing.assert_array_equal(out["labels"][1], [0, 1, 2, 3, 4, 10, 11, 12])
  np.testing.assert_array_equal(out["labels"][2], [30, 31, -1, -1, -1, -1, -1, -1])
  logits = out["labels"][..., None] * np.ones(2)  # a per-token output [R, L, 2]
  back = packing.unpack({"logits": logits}, out, [5, 3, 7, 2], token_outputs={"logits": 0.0})["logits"]
  assert back.shape == (4, 8, 2)
  np.testing.assert_array_equal(back[..., 0], np.where(arrays["labels"] >= 0, arrays["labels"], 0))


def test_rows_per_batch_keeps_about_batch_size_examples():
  assert packing.rows_per_batch(32, 1000, 200, 1) == 7  # 5 examples a row
  assert packing.rows_per_batch(32, 1000, 200, 8) == 8
  assert packing.rows_per_batch(32, 100, 100, 1) == 32  # one a row: unchanged


@pytest.mark.parametrize("regression", [False, True])
def test_packed_rows_compute_each_example_as_if_alone(regression):
  """The pooled [CLS] of every example of a packed row gives the logits it gets alone in a row."""
  cfg = tiny_bert_config(64)
  model = BertForTask(cfg, "sequence", 1 if regression else 3)
  lengths = [9, 4, 13, 2, 6, 7, 3, 11]
  arrays = per_example(lengths, length=16, seed=2)
  alone = packing.pack(arrays, packing.plan(np.array(lengths), 16, 1), 1)
  packed = packing.pack(arrays, packing.plan(np.array(lengths), 16, 4, seed=5), 4)
  assert len(packed["input_ids"]) < len(lengths)
  params = model.init(jax.random.key(0), jax.tree_util.tree_map(lambda a: jnp.asarray(a[:1]), alone))["params"]
  run = jax.jit(lambda b: model.apply({"params": params}, b)["logits"])
  want = packing.unpack({"logits": np.asarray(run(alone))}, alone, lengths)["logits"]
  got = packing.unpack({"logits": np.asarray(run(packed))}, packed, lengths)["logits"]
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
  assert not np.allclose(want[0], want[1])


def test_packed_token_logits_equal_each_sentence_alone():
  """NER: the per-wordpiece logits of a packed row equal those of each sentence alone in a row."""
  cfg = tiny_bert_config(64)
  model = BertForTask(cfg, "token", 5)
  lengths = [9, 4, 13, 2, 6, 7, 3, 11]
  arrays = per_example(lengths, length=16, seed=4)
  arrays["labels"] = np.where(arrays["input_mask"] == 1, 1, -1).astype(np.int32)
  del arrays["label"]
  alone = packing.pack(arrays, packing.plan(np.array(lengths), 16, 1), 1, {"labels": -1})
  packed = packing.pack(arrays, packing.plan(np.array(lengths), 16, 4, seed=5), 4, {"labels": -1})
  assert len(packed["input_ids"]) < len(lengths)
  params = model.init(jax.random.key(0), jax.tree_util.tree_map(lambda a: jnp.asarray(a[:1]), alone))["params"]
  run = jax.jit(lambda b: model.apply({"params": params}, b)["logits"])
  want = packing.unpack({"logits": np.asarray(run(alone))}, alone, lengths, {"logits": 0.0})["logits"]
  got = packing.unpack({"logits": np.asarray(run(packed))}, packed, lengths, {"logits": 0.0})["logits"]
  real = arrays["input_mask"] == 1
  np.testing.assert_allclose(got[real], want[real], atol=2e-5, rtol=0)
  assert not np.allclose(want[0, 1], want[1, 1])


def test_span_loss_of_packed_windows_is_each_windows_own_softmax():
  """SQuAD: the start/end loss of a packed row is the cross-entropy over each window's own tokens."""
  from flaxbert.finetune.tasks.qa import QuestionAnswering  # pylint: disable=import-outside-toplevel
  lengths = [9, 4, 13, 2, 6]
  arrays = per_example(lengths, length=16, seed=6)
  del arrays["label"]
  rng = np.random.default_rng(0)
  arrays["start_positions"] = np.array([rng.integers(0, n) for n in lengths], np.int32)
  arrays["end_positions"] = np.array([rng.integers(0, n) for n in lengths], np.int32)
  packed = packing.pack(arrays, packing.plan(np.array(lengths), 16, 3, seed=1), 3)
  packed["example_mask"] = np.ones(len(packed["input_ids"]), np.int32)
  logits = {k: rng.normal(size=packed["input_ids"].shape).astype(np.float32) for k in ("start_logits", "end_logits")}
  task = QuestionAnswering.__new__(QuestionAnswering)
  got = task.head_loss(logits, jax.tree_util.tree_map(jnp.asarray, packed))
  per_example_logits = packing.unpack(logits, packed, lengths, {k: float("-inf") for k in logits})
  want = 0.0
  for i, n in enumerate(lengths):
    for side in ("start", "end"):
      x = per_example_logits[f"{side}_logits"][i]
      assert np.isinf(x[n:]).all() and np.isfinite(x[:n]).all()
      want += 0.5 * (np.log(np.exp(x[:n]).sum()) - x[arrays[f"{side}_positions"][i]])
  assert float(got["task_count"]) == len(lengths)
  np.testing.assert_allclose(float(got["task_loss_sum"]), want, rtol=1e-5)
