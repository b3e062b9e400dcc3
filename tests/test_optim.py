"""Optimizers: schedule values, the decay mask, BERT Adam against the original's formulas, AdamW
against optax, clipping before the moments, accumulation, LAMB's trust ratio, dtypes, bad config."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from flaxbert.errors import InputError
from flaxbert.training.optim import OPTIMIZERS, build_optimizer, describe, learning_rate_schedule, weight_decay_mask

tree_map = jax.tree_util.tree_map


def optim_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(optimizer="adamw", learning_rate=1e-3, warmup_steps=10, num_train_steps=110,
                                     schedule="linear", weight_decay=0.01, adam_b1=0.9, adam_b2=0.999,
                                     adam_eps=1e-6, max_grad_norm=0.0, grad_accum_steps=1))
  c.update(overrides)
  return c


def dense(rng, n_in, n_out) -> dict:
  return {"kernel": rng.randn(n_in, n_out).astype(np.float32), "bias": rng.randn(n_out).astype(np.float32)}


def layer_norm(rng, n) -> dict:
  return {"scale": (1 + 0.1 * rng.randn(n)).astype(np.float32), "bias": (0.1 * rng.randn(n)).astype(np.float32)}


def tree(seed: int = 0) -> dict:
  """flaxbert's parameter names (BertForPreTraining, one layer), tiny shapes: H=4, 2 heads, I=8, V=6."""
  rng = np.random.RandomState(seed)
  attention = {name: {"kernel": rng.randn(4, 2, 2).astype(np.float32), "bias": rng.randn(2, 2).astype(np.float32)}
               for name in ("query", "key", "value")}
  attention["output"] = {"kernel": rng.randn(2, 2, 4).astype(np.float32), "bias": rng.randn(4).astype(np.float32)}
  attention["LayerNorm"] = layer_norm(rng, 4)
  embeddings = {name: {"embedding": rng.randn(rows, 4).astype(np.float32)}
                for name, rows in (("word_embeddings", 6), ("position_embeddings", 8), ("token_type_embeddings", 2))}
  embeddings["LayerNorm"] = layer_norm(rng, 4)
  layer = {"attention": attention, "intermediate": dense(rng, 4, 8), "output": dense(rng, 8, 4),
           "LayerNorm": layer_norm(rng, 4)}
  return {"bert": {"embeddings": embeddings, "encoder": {"layer_0": layer}, "pooler": {"dense": dense(rng, 4, 4)}},
          "cls": {"predictions": {"bias": rng.randn(6).astype(np.float32),
                                  "transform": {"dense": dense(rng, 4, 4), "LayerNorm": layer_norm(rng, 4)}},
                  "seq_relationship": dense(rng, 4, 2)}}


NO_DECAY = {
    "bert/embeddings/LayerNorm/scale", "bert/embeddings/LayerNorm/bias",
    "bert/encoder/layer_0/attention/query/bias", "bert/encoder/layer_0/attention/key/bias",
    "bert/encoder/layer_0/attention/value/bias", "bert/encoder/layer_0/attention/output/bias",
    "bert/encoder/layer_0/attention/LayerNorm/scale", "bert/encoder/layer_0/attention/LayerNorm/bias",
    "bert/encoder/layer_0/intermediate/bias", "bert/encoder/layer_0/output/bias",
    "bert/encoder/layer_0/LayerNorm/scale", "bert/encoder/layer_0/LayerNorm/bias",
    "bert/pooler/dense/bias", "cls/predictions/bias", "cls/predictions/transform/dense/bias",
    "cls/predictions/transform/LayerNorm/scale", "cls/predictions/transform/LayerNorm/bias",
    "cls/seq_relationship/bias"}


def paths(t) -> dict:
  return {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(t)}


def random_like(params, rng, norm=None):
  grads = tree_map(lambda p: rng.randn(*p.shape).astype(np.float32), params)
  if norm is not None:
    scale = norm / float(optax.tree.norm(grads))
    grads = tree_map(lambda g: (g * scale).astype(np.float32), grads)
  return grads


def run(tx, params, grads_seq):
  """Applies tx to params for each gradient in turn; returns the final params."""
  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for grads in grads_seq:
    params, state = step(params, state, grads)
  return params


def first_update(tx, params, grads):
  return jax.jit(lambda p, g: tx.update(g, tx.init(p), p)[0])(params, grads)


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def max_difference(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# --- schedule ----------------------------------------------------------------------------------


def test_linear_schedule_is_the_originals():
  """Warmup lr·step/10; then lr·(1 − step/110), polynomial_decay over the whole run, as create_optimizer."""
  s = learning_rate_schedule(optim_config())
  steps = (0, 5, 9, 10, 60, 109, 110, 500)
  expected = (0.0, 5e-4, 9e-4, 1e-3 * 100 / 110, 1e-3 * 50 / 110, 1e-3 / 110, 0.0, 0.0)
  assert [float(s(i)) for i in steps] == pytest.approx(expected, rel=1e-6, abs=1e-12)
  assert float(s(jnp.asarray(60, jnp.int32))) == pytest.approx(1e-3 * 50 / 110, rel=1e-6)  # optax's int32 count
  no_warmup = learning_rate_schedule(optim_config(warmup_steps=0))
  assert [float(no_warmup(i)) for i in (0, 55, 110)] == pytest.approx([1e-3, 5e-4, 0.0], rel=1e-6, abs=1e-12)


def test_constant_schedule_after_warmup():
  s = learning_rate_schedule(optim_config(schedule="constant"))
  assert [float(s(i)) for i in (0, 5, 10, 60, 110, 10_000)] == pytest.approx([0, 5e-4, 1e-3, 1e-3, 1e-3, 1e-3],
                                                                               rel=1e-6, abs=1e-12)


# --- weight-decay mask -------------------------------------------------------------------------


def test_decay_mask_skips_layer_norm_and_every_bias():
  params = tree()
  for t in (params, tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)):
    mask = paths(weight_decay_mask(t))
    assert {name for name, decays in mask.items() if not decays} == NO_DECAY
    decayed = {name for name, decays in mask.items() if decays}
    assert "bert/embeddings/word_embeddings/embedding" in decayed
    assert "bert/encoder/layer_0/attention/query/kernel" in decayed
    assert "cls/predictions/transform/dense/kernel" in decayed
    assert all(name.endswith(("kernel", "embedding")) for name in decayed) and len(decayed) == 12
  other = weight_decay_mask({"LayerNorm_0": {"scale": 1.0}, "layer_norm": {"scale": 1.0}, "Dense_0": {"kernel": 1.0}})
  assert other == {"LayerNorm_0": {"scale": False}, "layer_norm": {"scale": False}, "Dense_0": {"kernel": True}}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("mask_from", ["shapes", "update"])
def test_the_mask_reaches_the_optimizer(optimizer, mask_from):
  """With a zero gradient only the decay moves a parameter: decayed tensors move, the others don't."""
  params = tree()
  shapes = tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  tx = build_optimizer(optim_config(optimizer=optimizer, weight_decay=0.1, warmup_steps=0, schedule="constant"),
                       shapes if mask_from == "shapes" else None)
  updates = first_update(tx, params, tree_map(np.zeros_like, params))
  for name, update in paths(updates).items():
    if name in NO_DECAY:
      np.testing.assert_array_equal(update, 0.0, err_msg=name)
    elif optimizer == "lamb":  # trust ratio ‖p‖ / ‖0.1 p‖: the step is lr · p
      np.testing.assert_allclose(update, -1e-3 * paths(params)[name], rtol=1e-5, err_msg=name)
    else:
      np.testing.assert_allclose(update, -1e-3 * 0.1 * paths(params)[name], rtol=1e-5, err_msg=name)


# --- the update rules --------------------------------------------------------------------------


def test_bert_adam_is_the_original_formula():
  """AdamWeightDecayOptimizer.apply_gradients, in numpy: no bias correction, decay before the lr."""
  b1, b2, eps, wd, peak, warmup, total = 0.9, 0.999, 1e-6, 0.1, 1e-3, 3, 10
  config = optim_config(optimizer="bert_adam", weight_decay=wd, warmup_steps=warmup, num_train_steps=total)
  rng = np.random.RandomState(1)
  grads_seq = [random_like(tree(), rng) for _ in range(5)]
  ours = run(build_optimizer(config, tree()), tree(), grads_seq)

  ref = {name: p.astype(np.float64) for name, p in paths(tree()).items()}
  m = {name: np.zeros_like(p) for name, p in ref.items()}
  v = {name: np.zeros_like(p) for name, p in ref.items()}
  for step, grads in enumerate(grads_seq):
    lr = peak * step / warmup if step < warmup else peak * (1 - min(step, total) / total)
    for name, g in paths(grads).items():
      m[name] = b1 * m[name] + (1 - b1) * g
      v[name] = b2 * v[name] + (1 - b2) * np.square(g)
      update = m[name] / (np.sqrt(v[name]) + eps)
      if not any(pattern in name for pattern in ("LayerNorm", "layer_norm", "bias")):
        update += wd * ref[name]
      ref[name] = ref[name] - lr * update
  for name, p in paths(ours).items():
    np.testing.assert_allclose(p, ref[name], rtol=1e-6, atol=1e-7, err_msg=name)
  assert max_difference(ours, tree()) > 1e-3  # the parameters did move


def test_bert_adam_differs_from_adamw_early_by_the_bias_correction():
  """First step: AdamW's bias-corrected m̂/√v̂ = g/|g|; the original's m/√v = (1−b1)/√(1−b2) · g/|g|."""
  config = dict(warmup_steps=0, schedule="constant", weight_decay=0.0, adam_eps=1e-12)  # eps out of the way
  bert, adamw = build_optimizer(optim_config(optimizer="bert_adam", **config)), build_optimizer(optim_config(**config))
  params, grads = tree(), random_like(tree(), np.random.RandomState(2))
  first_bert, first_adamw = first_update(bert, params, grads), first_update(adamw, params, grads)
  ratio = 0.1 / np.sqrt(0.001)  # 3.16
  assert_trees_close(first_bert, tree_map(lambda u: ratio * u, first_adamw), rtol=1e-5, atol=0)
  np.testing.assert_allclose(np.abs(paths(first_adamw)["cls/predictions/bias"]), 1e-3, rtol=1e-5)


def test_adamw_matches_optax_adamw_with_the_mask():
  config = optim_config(weight_decay=0.1, warmup_steps=2, num_train_steps=20)
  ref = optax.adamw(learning_rate_schedule(config), b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.1,
                    mask=weight_decay_mask)
  rng = np.random.RandomState(3)
  grads_seq = [random_like(tree(), rng) for _ in range(4)]
  ours = run(build_optimizer(config, tree()), tree(), grads_seq)
  assert_trees_close(ours, run(ref, tree(), grads_seq), rtol=1e-6, atol=1e-8)
  unmasked = optax.adamw(learning_rate_schedule(config), eps=1e-6, weight_decay=0.1)
  assert max_difference(ours, run(unmasked, tree(), grads_seq)) > 1e-6  # the mask matters at this decay


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_clipping_comes_before_the_moments(optimizer):
  """g1 (norm 10) then g2 (norm 0.5) with clipping at 1 == g1/10 then g2 without clipping."""
  rng = np.random.RandomState(4)
  params = {"dense": dense(rng, 3, 2), "LayerNorm": layer_norm(rng, 2)}
  g1, g2 = random_like(params, rng, norm=10.0), random_like(params, rng, norm=0.5)
  config = dict(optimizer=optimizer, warmup_steps=0, schedule="constant")
  clipped = run(build_optimizer(optim_config(max_grad_norm=1.0, **config)), params, [g1, g2])
  reference = run(build_optimizer(optim_config(max_grad_norm=0.0, **config)), params,
                  [tree_map(lambda g: g / 10.0, g1), g2])
  assert_trees_close(clipped, reference, rtol=1e-6, atol=1e-8)
  unclipped = run(build_optimizer(optim_config(max_grad_norm=0.0, **config)), params, [g1, g2])
  assert max_difference(unclipped, reference) > 1e-5  # clipping changed what the moments saw


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_accumulated_micro_batches_equal_the_large_batch(optimizer):
  """4 micro-batches of 2 through optax.MultiSteps == one batch of 8 (mean loss), clipping binding."""
  rng = np.random.RandomState(5)
  params = {"dense": dense(rng, 3, 2), "LayerNorm": layer_norm(rng, 2)}
  x, y = rng.randn(3, 8, 3).astype(np.float32), rng.randn(3, 8, 2).astype(np.float32)  # 3 steps of 8 examples

  def loss(p, xb, yb):
    pred = (xb @ p["dense"]["kernel"] + p["dense"]["bias"]) * p["LayerNorm"]["scale"] + p["LayerNorm"]["bias"]
    return jnp.mean(jnp.sum(jnp.square(pred - yb), axis=-1))

  config = optim_config(optimizer=optimizer, warmup_steps=1, num_train_steps=4, max_grad_norm=0.05,
                        weight_decay=0.1, grad_accum_steps=4)
  big_tx = build_optimizer(config, params)
  acc_tx = optax.MultiSteps(build_optimizer(config, params), every_k_schedule=config.grad_accum_steps)

  def make_step(tx):
    @jax.jit
    def step(params, state, xb, yb):
      grads = jax.grad(loss)(params, xb, yb)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, optax.tree.norm(grads)
    return step

  big_step, acc_step = make_step(big_tx), make_step(acc_tx)
  big, big_state, acc, acc_state = params, big_tx.init(params), params, acc_tx.init(params)
  for step in range(3):
    big, big_state, norm = big_step(big, big_state, x[step], y[step])
    assert float(norm) > 0.05  # clipping binds: it must see the accumulated gradient
    for micro in range(4):
      rows = slice(2 * micro, 2 * micro + 2)
      acc, acc_state, _ = acc_step(acc, acc_state, x[step, rows], y[step, rows])
  assert_trees_close(acc, big, rtol=1e-6, atol=1e-6)
  assert max_difference(big, params) > 1e-4


def test_a_weighted_loss_needs_sums_not_micro_batch_means():
  """Why the train step accumulates sums / total weight rather than using MultiSteps' mean of means.

  A masked-LM loss is Σ w·ℓ / Σ w; micro-batches hold different numbers of masked positions.
  """
  rng = np.random.RandomState(6)
  params = {"dense": dense(rng, 3, 1)}
  x, t = rng.randn(8, 3).astype(np.float32), rng.randn(8).astype(np.float32)
  w = np.array([1, 1, 1, 0, 1, 0, 0, 0], np.float32)  # micro-batches of 2 hold 2, 1, 1, 0 positions

  def loss_sum(p, rows):
    pred = (x[rows] @ p["dense"]["kernel"] + p["dense"]["bias"])[:, 0]
    return jnp.sum(w[rows] * jnp.square(pred - t[rows]))

  full = jax.grad(lambda p: loss_sum(p, slice(0, 8)) / w.sum())(params)
  micro = [slice(2 * i, 2 * i + 2) for i in range(4)]
  sums = [jax.grad(loss_sum)(params, rows) for rows in micro]
  exact = tree_map(lambda *g: sum(g) / w.sum(), *sums)
  means = tree_map(lambda *g: sum(g) / 4, *[tree_map(lambda g, rows=rows: g / max(w[rows].sum(), 1.0), s)
                                             for s, rows in zip(sums, micro)])
  assert_trees_close(exact, full, rtol=1e-6, atol=1e-7)
  assert max_difference(means, full) > 1e-2


def test_lamb_trust_ratio_makes_each_update_proportional_to_its_parameter_norm():
  """Per tensor, ‖update‖ = lr · ‖param‖ (no decay): ‖p‖ / ‖adam direction‖ rescales each tensor."""
  tx = build_optimizer(optim_config(optimizer="lamb", warmup_steps=0, schedule="constant", weight_decay=0.0))
  rng = np.random.RandomState(7)
  params = {"a": {"kernel": np.full((4, 3), 0.5, np.float32)}, "b": {"kernel": 5 * rng.randn(6).astype(np.float32)},
            "c": {"bias": rng.randn(3).astype(np.float32)}}
  updates = first_update(tx, params, random_like(params, rng))
  for name, update in paths(updates).items():
    assert float(np.linalg.norm(update)) == pytest.approx(1e-3 * float(np.linalg.norm(paths(params)[name])), rel=1e-5)
  ratio = np.linalg.norm(updates["b"]["kernel"]) / np.linalg.norm(updates["a"]["kernel"])
  assert ratio == pytest.approx(np.linalg.norm(params["b"]["kernel"]) / np.linalg.norm(params["a"]["kernel"]), rel=1e-5)


# --- state -------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_state_follows_the_params_dtype_and_shards_like_the_params(optimizer):
  tx = build_optimizer(optim_config(optimizer=optimizer, max_grad_norm=1.0), tree())
  for dtype in (jnp.float32, jnp.bfloat16):
    params = tree_map(lambda p: jnp.asarray(p, dtype), tree())
    state = jax.jit(lambda p: tx.update(tree_map(jnp.ones_like, p), tx.init(p), p)[1])(params)
    floats = [x.dtype for x in jax.tree_util.tree_leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and set(floats) == {jnp.dtype(dtype)}
  # flaxbert.training.sharding lays the state out with optax.tree_map_params: every moment is a params tree.
  marked = optax.tree_map_params(tx, lambda _: "param", tx.init(tree()), transform_non_params=lambda _: "other")
  leaves = jax.tree_util.tree_leaves(marked)
  assert leaves.count("param") == 2 * len(jax.tree_util.tree_leaves(tree())) and set(leaves) <= {"param", "other"}


# --- config ------------------------------------------------------------------------------------


def test_describe_is_one_line():
  line = describe(optim_config(max_grad_norm=1.0, grad_accum_steps=4))
  assert "\n" not in line
  for part in ("adamw", "peak lr 0.001", "10 warmup steps", "0 at step 110", "weight decay 0.01",
               "clip at global norm 1", "4 micro-batch"):
    assert part in line
  assert "no clipping" in describe(optim_config(optimizer="lamb"))


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "sgd", "optim.optimizer: expected one of"),
    ("schedule", "cosine", "optim.schedule: expected one of"),
    ("learning_rate", -1.0, "optim.learning_rate: expected a positive number"),
    ("learning_rate", 0.0, "optim.learning_rate: expected a positive number"),
    ("num_train_steps", 0, "optim.num_train_steps: expected at least 1"),
    ("warmup_steps", 111, r"optim.warmup_steps: expected 0…num_train_steps \(110\), got 111"),
    ("warmup_steps", -1, "optim.warmup_steps: expected 0…num_train_steps"),
    ("warmup_steps", 2.5, "optim.warmup_steps: expected an integer"),
    ("weight_decay", -0.01, "optim.weight_decay: expected a number >= 0"),
    ("max_grad_norm", -1.0, "optim.max_grad_norm: expected a number >= 0"),
    ("adam_b2", 1.0, r"optim.adam_b2: expected a number in \[0, 1\)"),
    ("adam_eps", 0.0, "optim.adam_eps: expected a positive number"),
    ("grad_accum_steps", 0, "optim.grad_accum_steps: expected at least 1"),
])
def test_bad_config_names_the_field(field, value, message):
  config = optim_config()
  with config.ignore_type():
    setattr(config, field, value)
  for build in (build_optimizer, learning_rate_schedule, describe):
    with pytest.raises(InputError, match=message):
      build(config)


def test_a_non_number_is_refused():
  config = optim_config()
  with config.ignore_type():
    config.learning_rate = "1e-3"
  with pytest.raises(InputError, match="optim.learning_rate: expected a number, got '1e-3'"):
    build_optimizer(config)
