"""Greedy and beam search over any cached decoder, each one jitted `jax.lax.while_loop`.

The model is a step function `step_fn(params, cache, ids) -> (logits, cache)`: ids [B] are the
tokens at step t (the start token at t = 0), logits [B, V] score the token at t + 1, and the
cache carries everything else (keys/values, the position, the source). Every cache leaf with a
leading axis has the batch there (beam search repeats and reorders it); scalar leaves (a shared
position counter) are left alone. `step_fn` is a static argument: pass the same function object
each time (e.g. `flaxbert.models.encoder_decoder.decode_step(model)`) and a (batch, max_length, beam_size, ids,
penalty) combination compiles once; the loop never retraces per step.

Outputs hold the generated tokens only (no start token), EOS included, PAD after it.

Scores are length-normalised log-probabilities, GNMT's (Wu et al. 2016, also Tensor2Tensor's,
which BERT2BERT used):  score = Σ log p(y_i | y_<i, x) / ((5 + n) / 6) ** length_penalty,
with n the number of generated tokens including EOS. length_penalty = 0 gives the plain sum.
A hypothesis that reaches max_length without EOS is finished there and scored the same way.
"""
import functools
import math
import operator
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

from flaxbert.errors import InputError

StepFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]
NEG_INF = -1.0e9  # the score of an empty slot / dead beam
_DEAD = NEG_INF / 2  # anything below this is not a real hypothesis


@flax.struct.dataclass
class Generated:
  sequences: jax.Array  # greedy [B, L]; beam [B, K, L], best first
  scores: jax.Array  # greedy [B]; beam [B, K]: length-normalised log-probabilities
  steps: jax.Array  # decoder steps run (< max_length when every row finished early)


def length_norm(length, alpha: float):
  """GNMT's length penalty ((5 + n) / 6) ** alpha."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=("step_fn", "max_length", "start_id", "eos_id", "pad_id",
                                             "length_penalty"))
def greedy_search(step_fn: StepFn, params, cache, *, max_length: int, start_id: int, eos_id: int,
                  pad_id: int, length_penalty: float = 0.0) -> Generated:
  """The most likely next token at every step, until EOS or max_length; rows stop independently."""
  _check(max_length=max_length, beam_size=1, length_penalty=length_penalty)
  batch = batch_size(cache)
  init = dict(t=jnp.zeros((), jnp.int32), last=jnp.full((batch,), start_id, jnp.int32),
              seqs=jnp.full((batch, max_length), pad_id, jnp.int32),
              logp=jnp.zeros((batch,), jnp.float32), length=jnp.zeros((batch,), jnp.int32),
              finished=jnp.zeros((batch,), bool), cache=cache)

  def body(s):
    logits, cache = step_fn(params, s["cache"], s["last"])
    _check_ids(logits.shape[-1], start_id=start_id, eos_id=eos_id, pad_id=pad_id)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    token = jnp.where(s["finished"], pad_id, token)
    gained = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    return dict(t=s["t"] + 1, last=token, seqs=s["seqs"].at[:, s["t"]].set(token),
                logp=s["logp"] + jnp.where(s["finished"], 0.0, gained),
                length=s["length"] + (~s["finished"]).astype(jnp.int32),
                finished=s["finished"] | (token == eos_id), cache=cache)

  s = jax.lax.while_loop(lambda s: (s["t"] < max_length) & ~jnp.all(s["finished"]), body, init)
  return Generated(s["seqs"], s["logp"] / length_norm(s["length"], length_penalty), s["t"])


@functools.partial(jax.jit, static_argnames=("step_fn", "beam_size", "max_length", "start_id",
                                             "eos_id", "pad_id", "length_penalty"))
def beam_search(step_fn: StepFn, params, cache, *, beam_size: int, max_length: int, start_id: int,
                eos_id: int, pad_id: int, length_penalty: float = 0.6) -> Generated:
  """The beam_size best-scoring finished hypotheses per row, best first.

  Each step extends the K alive beams by every token and keeps the top 2K candidates by
  log-probability. Those ending in EOS (or at max_length) that rank within the top K compete
  for the K finished slots by score (HF transformers' rule: an EOS ranked below K is dropped,
  so K = 1 without length penalty is exactly greedy search); the others compete for the K
  alive beams by log-probability (at most K candidates end in EOS, so K stay alive).
  A row is done when its K finished slots are filled and no alive beam can still beat the
  worst of them: log-probs only fall, so an alive beam's best reachable score is its
  log-prob / max(lp(t+1), lp(max_length)). The loop stops when every row is done, so the
  result is what running to max_length would give.
  """
  _check(max_length=max_length, beam_size=beam_size, length_penalty=length_penalty)
  batch, k = batch_size(cache), beam_size
  cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, k, axis=0) if jnp.ndim(x) else x, cache)
  init = dict(
      t=jnp.zeros((), jnp.int32), last=jnp.full((batch, k), start_id, jnp.int32),
      seqs=jnp.full((batch, k, max_length), pad_id, jnp.int32),
      # all beams start equal: only beam 0 is alive, so the first step does not repeat itself
      alive=jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF), (batch, 1)),
      fin_seqs=jnp.full((batch, k, max_length), pad_id, jnp.int32),
      fin_scores=jnp.full((batch, k), NEG_INF, jnp.float32), cache=cache)

  def body(s):
    t = s["t"]
    logits, cache = step_fn(params, s["cache"], s["last"].reshape(batch * k))
    vocab = logits.shape[-1]
    _check_ids(vocab, start_id=start_id, eos_id=eos_id, pad_id=pad_id)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
    cand, flat = jax.lax.top_k((s["alive"][..., None] + logp).reshape(batch, k * vocab),
                               min(2 * k, k * vocab))
    beam, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(s["seqs"], beam[..., None], axis=1)
    seqs = jnp.where(jnp.arange(max_length) == t, token[..., None], seqs)
    ends = ((token == eos_id) | (t + 1 == max_length)) & (jnp.arange(cand.shape[1]) < k)
    new_fin = jnp.where(ends & (cand > _DEAD), cand / length_norm(t + 1, length_penalty), NEG_INF)
    fin_scores, pick = jax.lax.top_k(jnp.concatenate([s["fin_scores"], new_fin], axis=1), k)
    fin_seqs = jnp.take_along_axis(jnp.concatenate([s["fin_seqs"], seqs], axis=1),
                                   pick[..., None], axis=1)
    alive, pick = jax.lax.top_k(jnp.where(token == eos_id, NEG_INF, cand), k)
    origin = (jnp.arange(batch)[:, None] * k + jnp.take_along_axis(beam, pick, axis=1)).reshape(-1)
    cache = jax.tree_util.tree_map(lambda x: jnp.take(x, origin, axis=0) if jnp.ndim(x) else x, cache)
    return dict(t=t + 1, last=jnp.take_along_axis(token, pick, axis=1),
                seqs=jnp.take_along_axis(seqs, pick[..., None], axis=1), alive=alive,
                fin_seqs=fin_seqs, fin_scores=fin_scores, cache=cache)

  def running(s):
    best_reachable = jnp.max(s["alive"], axis=1) / jnp.maximum(
        length_norm(s["t"] + 1, length_penalty), length_norm(max_length, length_penalty))
    done = (jnp.min(s["fin_scores"], axis=1) >= best_reachable) | (jnp.max(s["alive"], axis=1) <= _DEAD)
    return (s["t"] < max_length) & ~jnp.all(done)

  s = jax.lax.while_loop(running, body, init)
  return Generated(s["fin_seqs"], s["fin_scores"], s["t"])


def batch_size(cache) -> int:
  """The leading axis shared by every non-scalar cache leaf."""
  sizes = {x.shape[0] for x in jax.tree_util.tree_leaves(cache) if jnp.ndim(x)}
  if len(sizes) != 1:
    raise InputError(f"cache: expected every non-scalar leaf to have the batch as its leading "
                     f"axis (one size), got leading sizes {sorted(sizes)}")
  return sizes.pop()


def _check(max_length: int, beam_size: int, length_penalty: float) -> None:
  for name, value in (("max_length", max_length), ("beam_size", beam_size)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise InputError(f"{name}: expected a positive integer, got {value!r}")
  if not isinstance(length_penalty, (int, float)) or not math.isfinite(length_penalty):
    raise InputError(f"length_penalty: expected a finite number, got {length_penalty!r}")


def _check_ids(vocab: int, **ids: int) -> None:
  for name, value in ids.items():
    try:
      ok = 0 <= operator.index(value) < vocab
    except TypeError:
      ok = False
    if not ok:
      raise InputError(f"{name}: expected a token id in [0, {vocab}), got {value!r}")
