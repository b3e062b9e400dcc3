"""Training input: fixed shapes, per-process shards, exact resume, dynamic masking, exact eval."""
import shutil

import numpy as np
import pytest

from configs import prepare as prepare_config
from corpus_fixtures import write_corpus, write_vocab
from data_prep.builder import prepare
from data_prep.format import FEATURES
from flaxbert.errors import InputError
from flaxbert.pretrain.input_pipeline import DynamicMasking, PretrainingData


def build(tmp_path, name, **overrides):
  c = prepare_config.get_config("tiny")
  c.input = (str(write_corpus(tmp_path / "corpus", num_files=4)),)
  c.vocab = str(write_vocab(tmp_path / "vocab.txt"))
  c.output_dir = str(tmp_path / name)
  c.validation_fraction = 0.2
  for k, v in overrides.items():
    c[k] = v
  return prepare(c)[0]


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory):
  return build(tmp_path_factory.mktemp("static"), "data")


@pytest.fixture(scope="module")
def dynamic_dir(tmp_path_factory):
  return build(tmp_path_factory.mktemp("dynamic"), "data", masking="dynamic", dupe_factor=1)


def test_shapes_and_dtypes(static_dir):
  data = PretrainingData(static_dir, "train", global_batch_size=8, seed=0)
  batch = data.batch(0)
  assert set(batch) == set(FEATURES)
  assert batch["input_ids"].shape == (8, 32) and batch["input_ids"].dtype == np.int32
  assert batch["masked_lm_positions"].shape == (8, 5) and batch["masked_lm_weights"].dtype == np.float32
  assert batch["next_sentence_labels"].shape == (8,)


def test_resume_gives_the_batches_an_uninterrupted_run_sees(static_dir):
  data = PretrainingData(static_dir, "train", global_batch_size=8, seed=1)
  steps = data.steps_per_epoch * 2 + 3  # across epoch boundaries
  straight = [b for _, b in zip(range(steps), data.iterate(0))]
  resumed = PretrainingData(static_dir, "train", global_batch_size=8, seed=1)
  tail = [b for _, b in zip(range(steps - 7), resumed.iterate(7))]
  for a, b in zip(straight[7:], tail):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  # Each epoch visits distinct examples (all but the remainder of a batch), in a new order.
  epoch = lambda e: np.concatenate([data._rows(s)[1] for s in range(e * data.steps_per_epoch,  # pylint: disable=protected-access
                                                                     (e + 1) * data.steps_per_epoch)])
  epoch0, epoch1 = epoch(0), epoch(1)
  assert len(set(epoch0.tolist())) == len(epoch0) == data.num_examples - data.num_examples % 8
  assert not np.array_equal(epoch0, epoch1)


def test_processes_read_disjoint_halves_of_the_global_batch(static_dir):
  whole = PretrainingData(static_dir, "train", global_batch_size=8, seed=2, process_index=0, process_count=1)
  halves = [PretrainingData(static_dir, "train", global_batch_size=8, seed=2, process_index=p, process_count=2)
            for p in (0, 1)]
  for step in (0, 5):
    joined = np.concatenate([h.batch(step)["input_ids"] for h in halves])
    np.testing.assert_array_equal(joined, whole.batch(step)["input_ids"])
  with pytest.raises(InputError, match="multiple of the number of processes"):
    PretrainingData(static_dir, "train", global_batch_size=7, seed=0, process_index=0, process_count=2)


def test_eval_visits_every_example_once_with_a_mask(static_dir):
  data = PretrainingData(static_dir, "validation", global_batch_size=16, seed=0)
  batches = list(data.eval_batches())
  assert len(batches) == -(-data.num_examples // 16)
  assert sum(int(b["example_mask"].sum()) for b in batches) == data.num_examples
  last = batches[-1]
  pad = last["example_mask"] == 0
  assert pad.any() or data.num_examples % 16 == 0
  assert not last["input_ids"][pad].any()
  rows = np.concatenate([b["input_ids"][b["example_mask"] == 1] for b in batches])
  source = data.source
  np.testing.assert_array_equal(rows, np.stack([source[i]["input_ids"] for i in range(len(source))]))


def test_dynamic_masking_fresh_per_epoch_and_deterministic(dynamic_dir):
  masking = DynamicMasking(masked_lm_prob=0.3, max_predictions_per_seq=8)
  data = PretrainingData(dynamic_dir, "train", global_batch_size=4, seed=3, masking=masking)
  again = PretrainingData(dynamic_dir, "train", global_batch_size=4, seed=3, masking=masking)
  a, b = data.batch(0), again.batch(0)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert set(a) == set(FEATURES) and a["masked_lm_positions"].shape == (4, 8)
  # The same example in the next epoch gets a different mask.
  _, rows0 = data._rows(0)  # pylint: disable=protected-access
  epoch1 = {tuple(data._rows(s)[1]): s for s in range(data.steps_per_epoch, 2 * data.steps_per_epoch)}  # pylint: disable=protected-access
  target = int(rows0[0])
  step1 = next(s for r, s in epoch1.items() if target in r)
  row1 = list(data._rows(step1)[1]).index(target)  # pylint: disable=protected-access
  b1 = data.batch(step1)
  assert not np.array_equal(a["masked_lm_positions"][0], b1["masked_lm_positions"][row1]) or \
      not np.array_equal(a["input_ids"][0], b1["input_ids"][row1])
  # The rate is configurable: 0.3 masks about twice as much as 0.15.
  def rate(prob):
    d = PretrainingData(dynamic_dir, "train", global_batch_size=8, seed=4,
                        masking=DynamicMasking(masked_lm_prob=prob, max_predictions_per_seq=32))
    w = sum(d.batch(s)["masked_lm_weights"].sum() for s in range(d.steps_per_epoch))
    n = sum(d.batch(s)["input_mask"].sum() for s in range(d.steps_per_epoch))
    return w / n
  low, high = rate(0.15), rate(0.3)
  assert 0.11 < low < 0.19 and 0.24 < high < 0.36


def test_missing_dataset_and_split(tmp_path, static_dir):
  with pytest.raises(InputError, match="not a prepared dataset"):
    PretrainingData(tmp_path, "train", global_batch_size=8, seed=0)
  with pytest.raises(InputError, match="has no split 'test'"):
    PretrainingData(static_dir, "test", global_batch_size=8, seed=0)


@pytest.fixture(scope="module")
def unpaired_dir(tmp_path_factory):
  """Dynamic masking without NSP, many short sequences: what packing is for."""
  return build(tmp_path_factory.mktemp("unpaired"), "data", masking="dynamic", dupe_factor=1,
               random_next_sentence=False, short_seq_prob=0.5)


def slots(batch: dict, row: int):
  """(tokens, masked positions within the sequence, masked ids) of each sequence of a packed row."""
  out = []
  mask, pos = batch["input_mask"][row], batch["masked_lm_positions"][row]
  real = batch["masked_lm_weights"][row] > 0
  for slot in range(1, mask.max() + 1):
    where = np.flatnonzero(mask == slot)
    start, end = where[0], where[-1] + 1
    assert np.array_equal(batch["position_ids"][row, start:end], np.arange(end - start))
    mine = real & (pos >= start) & (pos < end)
    out.append((batch["input_ids"][row, start:end].tolist(), (pos[mine] - start).tolist(),
                batch["masked_lm_ids"][row][mine].tolist()))
  return out


def test_packed_rows_hold_every_sequence_masked_as_unpacked(unpaired_dir):
  masking = DynamicMasking(masked_lm_prob=0.15, max_predictions_per_seq=5)
  plain = PretrainingData(unpaired_dir, "train", global_batch_size=4, seed=7, masking=masking)
  packed = PretrainingData(unpaired_dir, "train", global_batch_size=4, seed=7, masking=masking, max_examples_per_row=4)
  assert packed.num_rows < 0.8 * plain.num_examples == 0.8 * packed.num_examples
  b = packed.batch(0)
  assert set(b) == set(FEATURES) | {"position_ids"}
  assert b["masked_lm_positions"].shape == (4, packed.max_predictions)
  seen = []
  for step in range(packed.steps_per_epoch):  # epoch 0: each sequence's masks as unpacked reading gives
    batch, (_, rows) = packed.batch(step), packed._rows(step)  # pylint: disable=protected-access
    for r, row in enumerate(rows):
      members = packed._plan[int(row)]  # pylint: disable=protected-access
      alone = plain._read(members, epoch=0)  # pylint: disable=protected-access
      for i, (tokens, positions, ids) in zip(members, slots(batch, r)):
        n = int(alone["input_mask"][list(members).index(i)].sum())
        k = list(members).index(i)
        w = alone["masked_lm_weights"][k] > 0
        assert tokens == alone["input_ids"][k, :n].tolist()
        assert positions == alone["masked_lm_positions"][k][w].tolist() and ids == alone["masked_lm_ids"][k][w].tolist()
        seen.append(int(i))
  assert len(seen) == len(set(seen)) >= packed.steps_per_epoch * 4
  evaluated = sorted(int(i) for r in range(packed.num_rows) for i in packed._plan[r])  # pylint: disable=protected-access
  assert evaluated == list(range(packed.num_examples))


def test_prepare_writes_the_lengths_packing_plans_from(unpaired_dir, tmp_path, monkeypatch):
  """Each split's lengths file holds every example's token count in index order; packing plans from
  it without reading an example, to the plan that reading the lengths gives; a wrong file is refused."""
  plain = PretrainingData(unpaired_dir, "train", global_batch_size=4, seed=7)
  assert plain.builder.info.metadata["lengths_files"] == {s: f"lengths-{s}.npy" for s in ("train", "validation")}
  lengths = np.load(unpaired_dir / "lengths-train.npy")
  assert lengths.dtype == np.uint8 and len(lengths) == plain.num_examples  # the smallest holding max_seq_length 32
  masks = plain.source.__getitems__(list(range(plain.num_examples)))
  assert lengths.tolist() == [int(np.asarray(e["input_mask"]).sum()) for e in masks]

  source_type, reads = type(plain.source), []
  original = source_type.__getitems__
  monkeypatch.setattr(source_type, "__getitems__", lambda self, keys: reads.append(len(keys)) or original(self, keys))
  packed = PretrainingData(unpaired_dir, "train", global_batch_size=4, seed=7, max_examples_per_row=4)
  assert reads == []
  monkeypatch.undo()

  copy = tmp_path / "copy"
  shutil.copytree(unpaired_dir, copy)
  (copy / "lengths-train.npy").unlink()  # as a dataset without one (an older flaxbert): lengths read from the examples
  read = PretrainingData(copy, "train", global_batch_size=4, seed=7, max_examples_per_row=4)
  assert [r.tolist() for r in read._plan] == [r.tolist() for r in packed._plan]  # pylint: disable=protected-access
  for bad in (lengths[:-1], np.full_like(lengths, 33), lengths.astype(np.float32)):
    np.save(copy / "lengths-train.npy", bad)
    with pytest.raises(InputError, match=r"lengths-train.npy: expected \d+ integer lengths in \[1, 32\]"):
      PretrainingData(copy, "train", global_batch_size=4, seed=7, max_examples_per_row=4)
  (copy / "lengths-train.npy").write_bytes(b"not numpy")
  with pytest.raises(InputError, match="lengths-train.npy: not a readable .npy"):
    PretrainingData(copy, "train", global_batch_size=4, seed=7, max_examples_per_row=4)


def test_packing_needs_dynamic_masking_without_nsp(static_dir, dynamic_dir):
  for directory in (static_dir, dynamic_dir):  # masks stored; NSP pairs
    with pytest.raises(InputError, match="packing needs a dynamic-masking dataset without next-sentence"):
      PretrainingData(directory, "train", global_batch_size=4, seed=0, max_examples_per_row=2)


def test_packed_pretraining_loss_equals_the_unpacked_one(unpaired_dir):
  """Over the whole validation split the MLM loss sums are the same packed and one sequence a row."""
  import jax  # pylint: disable=import-outside-toplevel

  from flaxbert.models.config import BertConfig  # pylint: disable=import-outside-toplevel
  from flaxbert.models.pretraining import BertForPreTraining  # pylint: disable=import-outside-toplevel
  from flaxbert.pretrain.job import loss_sums  # pylint: disable=import-outside-toplevel
  masking = DynamicMasking(masked_lm_prob=0.15, max_predictions_per_seq=5)
  plain = PretrainingData(unpaired_dir, "validation", global_batch_size=8, seed=1, masking=masking)
  packed = PretrainingData(unpaired_dir, "validation", global_batch_size=8, seed=1, masking=masking,
                           max_examples_per_row=8)
  assert packed.num_rows < plain.num_rows
  vocab = plain.builder.info.metadata["tokenizer"]["vocab_size"]
  model = BertForPreTraining(BertConfig.from_size("tiny", vocab_size=vocab, max_position_embeddings=32))
  params = model.init(jax.random.key(0), np.zeros((1, 32), np.int32))["params"]
  step = jax.jit(lambda b: loss_sums(model, params, b, None, deterministic=True, nsp=False))
  totals = []
  for data in (plain, packed):
    sums = [step(b) for b in data.eval_batches()]
    totals.append({k: float(sum(s[k] for s in sums)) for k in ("mlm_loss_sum", "mlm_count", "mlm_correct")})
  assert totals[0]["mlm_count"] == totals[1]["mlm_count"] > 0
  assert totals[0]["mlm_correct"] == totals[1]["mlm_correct"]
  np.testing.assert_allclose(totals[1]["mlm_loss_sum"], totals[0]["mlm_loss_sum"], rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_the_keyed_order_is_a_permutation_of_every_size(n):
  from flaxbert.pretrain.order import epoch_rows  # pylint: disable=import-outside-toplevel
  rows = epoch_rows(np.arange(n), n, seed=3, epoch=1)
  assert np.array_equal(np.sort(rows), np.arange(n))
  assert np.array_equal(epoch_rows(np.arange(n)[::-1], n, 3, 1), rows[::-1])  # any positions, one by one


def test_the_keyed_order_shuffles_and_changes_every_epoch():
  from flaxbert.pretrain.order import epoch_rows  # pylint: disable=import-outside-toplevel
  n = 10_000
  a, b = epoch_rows(np.arange(n), n, 0, 0), epoch_rows(np.arange(n), n, 0, 1)
  assert abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.05 and (a == b).mean() < 0.01
  assert not np.array_equal(a, epoch_rows(np.arange(n), n, 1, 0))  # the seed matters
  far = epoch_rows(np.arange(256_000_000, 256_000_256), 10 ** 9, 0, 0)  # step 10^6 of 10^9 rows, no epoch drawn
  assert len(set(far.tolist())) == 256 and far.min() >= 0 and far.max() < 10 ** 9
