"""Greedy and beam search on toy step functions: exact against exhaustive search, EOS handling,
one compilation per shape."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxbert.errors import InputError
from flaxbert.models.generation import beam_search, greedy_search

V, PAD, EOS, START = 5, 0, 1, 4
ROWS = 800  # prefix codes per example: h ← h·V + token + 1 stays below 800 for 4 fed tokens


def prefix_model(counter=None):
  """Logits = table[example, code of the whole prefix]: every prefix has its own distribution."""
  def step(table, cache, ids):
    if counter is not None:
      counter.append(1)  # runs only while jax traces the function
    code = cache["code"] * V + ids + 1
    logits = table[cache["example"] * ROWS + code]
    return logits, dict(cache, code=code, fed=cache["fed"] + 1)
  return step


def prefix_cache(batch: int) -> dict:
  # "fed" is a scalar leaf: generation must leave it unbatched.
  return {"code": jnp.zeros((batch,), jnp.int32), "example": jnp.arange(batch, dtype=jnp.int32),
          "fed": jnp.zeros((), jnp.int32)}


def make_table(batch: int, seed: int, eos_bias: float = 0.0) -> np.ndarray:
  table = 2.0 * np.random.RandomState(seed).standard_normal((batch * ROWS, V)).astype(np.float32)
  table[:, EOS] += eos_bias
  return table


def lp(n: int, alpha: float) -> float:
  return ((5.0 + n) / 6.0) ** alpha


def log_softmax(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.float64)
  return x - np.log(np.sum(np.exp(x - x.max()))) - x.max()


def exhaustive(table: np.ndarray, example: int, max_length: int, alpha: float) -> list:
  """Every hypothesis (ends at the first EOS, or at max_length), scored, best first."""
  out = []
  for n in range(1, max_length + 1):
    for seq in itertools.product(range(V), repeat=n):
      if EOS in seq[:-1] or (n < max_length and seq[-1] != EOS):
        continue
      code, total = START + 1, 0.0
      for tok in seq:
        total += log_softmax(table[example * ROWS + code])[tok]
        code = code * V + tok + 1
      out.append((total / lp(n, alpha), list(seq) + [PAD] * (max_length - n)))
  return sorted(out, key=lambda x: -x[0])


def ids(**kw):
  return dict(start_id=START, eos_id=EOS, pad_id=PAD, **kw)


@pytest.mark.parametrize("alpha,eos_bias", [(0.0, 0.0), (0.6, 0.0), (1.0, 2.0)])
def test_beam_search_equals_exhaustive_search(alpha, eos_bias):
  # exact when K covers every candidate before the last step (5 · 4² = 80 at length 3): all
  # hypotheses up to length 3 are then scored, and the top K of length 4 always are
  batch, max_length, k = 2, 4, 80
  table = make_table(batch, seed=1, eos_bias=eos_bias)
  out = beam_search(prefix_model(), jnp.asarray(table), prefix_cache(batch), beam_size=k,
                    max_length=max_length, length_penalty=alpha, **ids())
  assert out.sequences.shape == (batch, k, max_length) and out.scores.shape == (batch, k)
  for b in range(batch):
    ref = exhaustive(table, b, max_length, alpha)
    assert len(ref) == 1 + 4 + 16 + 64 + 256
    np.testing.assert_array_equal(out.sequences[b, 0], ref[0][1])
    np.testing.assert_allclose(out.scores[b], [s for s, _ in ref[:k]], atol=1e-5, rtol=0)
    scored = {tuple(seq): s for s, seq in ref}
    for seq, score in zip(np.asarray(out.sequences[b]), np.asarray(out.scores[b])):
      assert abs(scored[tuple(seq)] - score) < 1e-5  # each returned hypothesis is scored right


def test_small_beam_finds_the_best_of_an_easy_problem_and_stops_early():
  """With EOS very likely, a beam of 2 stops before max_length and still returns the optimum."""
  batch, max_length = 3, 4
  table = make_table(batch, seed=2, eos_bias=6.0)
  out = beam_search(prefix_model(), jnp.asarray(table), prefix_cache(batch), beam_size=2,
                    max_length=max_length, length_penalty=0.6, **ids())
  assert int(out.steps) < max_length
  for b in range(batch):
    ref = exhaustive(table, b, max_length, 0.6)
    np.testing.assert_array_equal(out.sequences[b, :2], [seq for _, seq in ref[:2]])


def test_greedy_equals_beam_size_one_and_a_reference_loop():
  batch, max_length = 4, 4
  table = make_table(batch, seed=3, eos_bias=1.0)
  greedy = greedy_search(prefix_model(), jnp.asarray(table), prefix_cache(batch),
                         max_length=max_length, **ids())
  beam = beam_search(prefix_model(), jnp.asarray(table), prefix_cache(batch), beam_size=1,
                     max_length=max_length, length_penalty=0.0, **ids())
  np.testing.assert_array_equal(greedy.sequences, beam.sequences[:, 0])
  np.testing.assert_allclose(greedy.scores, beam.scores[:, 0], atol=1e-5, rtol=0)
  # a plain Python greedy loop, with GNMT's length penalty on the result
  alpha = 0.6
  greedy = greedy_search(prefix_model(), jnp.asarray(table), prefix_cache(batch),
                         max_length=max_length, length_penalty=alpha, **ids())
  lengths = []
  for b in range(batch):
    code, total, seq = START + 1, 0.0, []
    while len(seq) < max_length and EOS not in seq:
      logp = log_softmax(table[b * ROWS + code])
      seq.append(int(np.argmax(logp)))
      total += logp[seq[-1]]
      code = code * V + seq[-1] + 1
    lengths.append(len(seq))
    np.testing.assert_array_equal(greedy.sequences[b], seq + [PAD] * (max_length - len(seq)))
    assert abs(float(greedy.scores[b]) - total / lp(len(seq), alpha)) < 1e-5
  assert len(set(lengths)) > 1  # rows finished at different steps


def scripted_model(script: np.ndarray):
  """Row b emits script[b, t] at step t with probability ≈ 1 (the cache counts the steps)."""
  def step(params, cache, ids):
    del params, ids
    t = jnp.minimum(cache["t"], script.shape[1] - 1)
    logits = 20.0 * jax.nn.one_hot(jnp.asarray(script)[:, t], V)
    return logits[cache["row"]], dict(cache, t=cache["t"] + 1)
  return step


def test_greedy_pads_after_eos_and_stops_when_every_row_has_finished():
  script = np.array([[3, EOS, 2, 2, 2, 2], [2, 3, 3, EOS, 2, 2], [2, 2, 2, 2, 2, 2]])
  cache = {"row": jnp.arange(3), "t": jnp.zeros((), jnp.int32)}
  out = greedy_search(scripted_model(script), None, cache, max_length=6, **ids())
  np.testing.assert_array_equal(out.sequences, [[3, EOS, PAD, PAD, PAD, PAD],
                                                [2, 3, 3, EOS, PAD, PAD],
                                                [2, 2, 2, 2, 2, 2]])
  assert int(out.steps) == 6
  out = greedy_search(scripted_model(script[:2]), None, {"row": jnp.arange(2), "t": cache["t"]},
                      max_length=6, **ids())
  assert int(out.steps) == 4  # the last row finished at step 4: no more decoder calls
  np.testing.assert_allclose(out.scores, 0.0, atol=1e-6)  # log p ≈ 0 on the scripted path


def test_beam_hypotheses_stop_growing_at_eos():
  table = make_table(2, seed=4, eos_bias=1.5)
  out = beam_search(prefix_model(), jnp.asarray(table), prefix_cache(2), beam_size=4, max_length=4,
                    length_penalty=0.6, **ids())
  seqs = np.asarray(out.sequences)
  assert np.all(np.diff(np.asarray(out.scores), axis=1) <= 1e-6)  # best first
  saw_early_eos = False
  for seq in seqs.reshape(-1, 4):
    ends = np.flatnonzero(seq == EOS)
    if len(ends):
      assert len(ends) == 1 and np.all(seq[ends[0] + 1:] == PAD)
      saw_early_eos |= ends[0] < 3
  assert saw_early_eos


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_one_trace_for_all_steps_and_calls(search):
  traces = []
  step = prefix_model(traces)
  fn = greedy_search if search == "greedy" else beam_search
  kw = ids(max_length=4) if search == "greedy" else ids(max_length=4, beam_size=3, length_penalty=0.6)
  before = fn._cache_size()  # pylint: disable=protected-access
  outs = [fn(step, jnp.asarray(make_table(2, seed)), prefix_cache(2), **kw) for seed in (5, 6)]
  assert len(traces) == 1, f"step function traced {len(traces)} times"
  assert fn._cache_size() == before + 1  # pylint: disable=protected-access
  assert all(int(o.steps) > 1 for o in outs)  # several decoder steps ran in that one trace
  assert not np.array_equal(outs[0].sequences, outs[1].sequences)  # the inputs did change


def test_bad_arguments_are_input_errors():
  step, table = prefix_model(), jnp.asarray(make_table(2, seed=0))
  with pytest.raises(InputError, match="beam_size"):
    beam_search(step, table, prefix_cache(2), beam_size=0, max_length=3, **ids())
  with pytest.raises(InputError, match="eos_id"):
    greedy_search(step, table, prefix_cache(2), max_length=3, start_id=START, eos_id=V, pad_id=PAD)
  bad_cache = dict(prefix_cache(2), example=jnp.arange(3))
  with pytest.raises(InputError, match="leading"):
    greedy_search(step, table, bad_cache, max_length=3, **ids())
