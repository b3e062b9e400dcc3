"""The model: golden parameter tree, logical axes, dropout, padding invariance, masked gather, 8 devices."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from conftest import make_batch
from flaxbert.errors import InputError
from flaxbert.models.activations import gelu
from flaxbert.models.config import BertConfig
from flaxbert.models.encoder import attention_implementation, truncated_normal
from flaxbert.models.pretraining import BertEncoder, BertForPreTraining, add_vocab_bias, build_model, param_shapes


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  return {"/".join(k.key for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_golden_parameter_tree_tiny():
  shapes = _flat_shapes(param_shapes(build_model(BertConfig.from_size("tiny"))))
  layer = {
      "attention/query/kernel": (128, 2, 64), "attention/query/bias": (2, 64),
      "attention/key/kernel": (128, 2, 64), "attention/key/bias": (2, 64),
      "attention/value/kernel": (128, 2, 64), "attention/value/bias": (2, 64),
      "attention/output/kernel": (2, 64, 128), "attention/output/bias": (128,),
      "attention/LayerNorm/scale": (128,), "attention/LayerNorm/bias": (128,),
      "intermediate/kernel": (128, 512), "intermediate/bias": (512,),
      "output/kernel": (512, 128), "output/bias": (128,),
      "LayerNorm/scale": (128,), "LayerNorm/bias": (128,),
  }
  golden = {
      "bert/embeddings/word_embeddings/embedding": (30522, 128),
      "bert/embeddings/position_embeddings/embedding": (512, 128),
      "bert/embeddings/token_type_embeddings/embedding": (2, 128),
      "bert/embeddings/LayerNorm/scale": (128,), "bert/embeddings/LayerNorm/bias": (128,),
      **{f"bert/encoder/layer_{i}/{k}": v for i in range(2) for k, v in layer.items()},
      "bert/pooler/dense/kernel": (128, 128), "bert/pooler/dense/bias": (128,),
      "cls/predictions/transform/dense/kernel": (128, 128), "cls/predictions/transform/dense/bias": (128,),
      "cls/predictions/transform/LayerNorm/scale": (128,), "cls/predictions/transform/LayerNorm/bias": (128,),
      "cls/predictions/bias": (30522,),
      "cls/seq_relationship/kernel": (128, 2), "cls/seq_relationship/bias": (2,),
  }
  assert shapes == golden


def test_parameter_counts_match_published_bert_base():
  count = lambda m: sum(math.prod(s) for s in _flat_shapes(param_shapes(m)).values())
  base = BertConfig.from_size("base")
  assert count(BertEncoder(base)) == 109_482_240  # bert-base-uncased BertModel, as HF reports it
  assert count(BertForPreTraining(base)) == 109_482_240 + 768 * 768 + 768 + 2 * 768 + 30522 + 768 * 2 + 2


def test_logical_axis_names(tiny_model):
  variables = jax.eval_shape(tiny_model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  specs = nn.get_partition_spec(variables)["params"]
  layer = specs["bert"]["encoder"]["layer_0"]
  assert specs["bert"]["embeddings"]["word_embeddings"]["embedding"] == P("vocab", "embed")
  assert layer["attention"]["query"]["kernel"] == P("embed", "heads", "kv")
  assert layer["attention"]["output"]["kernel"] == P("heads", "kv", "embed")
  assert layer["intermediate"]["kernel"] == P("embed", "mlp")
  assert layer["output"]["kernel"] == P("mlp", "embed")
  assert specs["cls"]["predictions"]["bias"] == P("vocab")
  for path, spec in jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]:
    assert len(spec) > 0 and all(isinstance(a, str) for a in spec), jax.tree_util.keystr(path)


def test_truncated_normal_init_matches_tf1():
  x = np.asarray(truncated_normal(0.02)(jax.random.key(0), (200_000,)))
  assert np.abs(x).max() <= 0.04
  # TF1's truncated_normal_initializer(0.02) cuts N(0, 0.02²) at ±2σ without rescaling: std 0.02·0.8796.
  assert abs(x.std() - 0.02 * 0.87962566) < 2e-4
  assert abs(x.mean()) < 2e-4


def test_output_shapes_and_masked_positions(tiny_model, tiny_params, tiny_config):
  batch = make_batch(tiny_config)
  out = tiny_model.apply({"params": tiny_params}, **batch)
  assert out.last_hidden_state.shape == (3, 16, 128)
  assert out.pooled_output.shape == (3, 128)
  assert out.mlm_logits.shape == (3, 16, tiny_config.vocab_size)
  assert out.nsp_logits.shape == (3, 2)
  positions = np.array([[1, 5, 7], [2, 2, 0], [9, 3, 4]])
  gathered = tiny_model.apply({"params": tiny_params}, **batch, masked_positions=positions)
  assert gathered.mlm_logits.shape == (3, 3, tiny_config.vocab_size)
  expected = np.take_along_axis(np.asarray(out.mlm_logits), positions[..., None], axis=1)
  np.testing.assert_allclose(gathered.mlm_logits, expected, atol=1e-5)


def test_headless_encoder(tiny_config, tiny_params):
  model = BertEncoder(tiny_config)
  out = model.apply({"params": {"bert": tiny_params["bert"]}}, make_batch(tiny_config)["input_ids"])
  assert out.mlm_logits is None and out.nsp_logits is None and out.pooled_output.shape == (3, 128)


def test_dropout_on_and_off(tiny_model, tiny_params, tiny_config):
  batch = make_batch(tiny_config)
  apply = lambda rng, det: tiny_model.apply({"params": tiny_params}, **batch, deterministic=det,
                                            rngs={"dropout": rng} if rng is not None else None)
  a, b = apply(None, True), apply(None, True)
  np.testing.assert_array_equal(a.last_hidden_state, b.last_hidden_state)
  d1, d1_again, d2 = apply(jax.random.key(1), False), apply(jax.random.key(1), False), apply(jax.random.key(2), False)
  np.testing.assert_array_equal(d1.last_hidden_state, d1_again.last_hidden_state)
  assert np.abs(d1.last_hidden_state - d2.last_hidden_state).max() > 1e-2
  assert np.abs(d1.last_hidden_state - a.last_hidden_state).max() > 1e-2
  # Rates of zero make training mode deterministic: only dropout differs between the modes.
  no_drop = build_model(tiny_config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
  z = no_drop.apply({"params": tiny_params}, **batch, deterministic=False, rngs={"dropout": jax.random.key(3)})
  np.testing.assert_allclose(z.last_hidden_state, a.last_hidden_state, atol=1e-5)


def test_attention_dropout_path_alone(tiny_config, tiny_params):
  """Attention-probability dropout alone changes outputs (the explicit attention path is live)."""
  model = build_model(tiny_config.replace(hidden_dropout_prob=0.0))
  batch = make_batch(tiny_config)
  det = model.apply({"params": tiny_params}, **batch)
  drop = model.apply({"params": tiny_params}, **batch, deterministic=False, rngs={"dropout": jax.random.key(0)})
  assert np.abs(det.last_hidden_state - drop.last_hidden_state).max() > 1e-3


def test_padding_invariance(tiny_model, tiny_params, tiny_config):
  batch = make_batch(tiny_config)
  out = tiny_model.apply({"params": tiny_params}, **batch)
  changed = {k: v.copy() for k, v in batch.items()}
  pad = batch["attention_mask"] == 0
  assert pad.any()
  changed["input_ids"][pad] = np.random.RandomState(1).randint(1, tiny_config.vocab_size, pad.sum())
  changed["token_type_ids"][pad] = 1
  out2 = tiny_model.apply({"params": tiny_params}, **changed)
  keep = ~pad
  np.testing.assert_allclose(np.asarray(out2.last_hidden_state)[keep], np.asarray(out.last_hidden_state)[keep],
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(out2.mlm_logits)[keep], np.asarray(out.mlm_logits)[keep], atol=1e-5)
  np.testing.assert_allclose(out2.nsp_logits, out.nsp_logits, atol=1e-6)
  # And the mask matters: the same change without masking alters the real tokens' outputs.
  unmasked = tiny_model.apply({"params": tiny_params}, changed["input_ids"], changed["token_type_ids"])
  assert np.abs(np.asarray(unmasked.last_hidden_state)[keep] - np.asarray(out.last_hidden_state)[keep]).max() > 1e-3


@pytest.mark.parametrize("dropout_rates", [(0.0, 0.0), (0.0, 0.1)])
def test_packed_row_equals_examples_alone(tiny_config, tiny_params, dropout_rates):
  """Sequence packing: examples side by side in one row (attention_mask numbering them, positions
  restarting) give each example's outputs as if it were alone in a padded row. With attention
  dropout on (explicit attention path) the masks differ, so only the deterministic outputs and
  the mask's shape are compared there."""
  cfg = tiny_config.replace(hidden_dropout_prob=dropout_rates[0], attention_probs_dropout_prob=dropout_rates[1])
  model = build_model(cfg)
  alone = make_batch(cfg, batch=3, length=16)
  lengths = alone["attention_mask"].sum(1)  # 16, 11, 6
  order = [1, 2]  # 11 + 6 tokens in a row of 20
  packed = {k: np.zeros((1, 20), np.int32) for k in ("input_ids", "token_type_ids", "attention_mask", "position_ids")}
  start = 0
  for number, b in enumerate(order, 1):
    n = lengths[b]
    packed["input_ids"][0, start:start + n] = alone["input_ids"][b, :n]
    packed["token_type_ids"][0, start:start + n] = alone["token_type_ids"][b, :n]
    packed["attention_mask"][0, start:start + n] = number
    packed["position_ids"][0, start:start + n] = np.arange(n)
    start += n
  ref = model.apply({"params": tiny_params}, **alone).last_hidden_state
  got = model.apply({"params": tiny_params}, **packed).last_hidden_state
  start = 0
  for b in order:
    n = lengths[b]
    np.testing.assert_allclose(np.asarray(got)[0, start:start + n], np.asarray(ref)[b, :n], atol=2e-5)
    start += n
  # Numbering matters: the same row with one example number mixes the two examples.
  mixed = dict(packed, attention_mask=(packed["attention_mask"] > 0).astype(np.int32))
  mixed_out = model.apply({"params": tiny_params}, **mixed).last_hidden_state
  assert np.abs(np.asarray(mixed_out)[0, :lengths[1]] - np.asarray(ref)[1, :lengths[1]]).max() > 1e-3
  if dropout_rates[1]:
    out = model.apply({"params": tiny_params}, **packed, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert np.isfinite(np.asarray(out.last_hidden_state)).all()


def test_bfloat16_compute_close_to_float32(tiny_config, tiny_params):
  batch = make_batch(tiny_config)
  f32 = build_model(tiny_config).apply({"params": tiny_params}, **batch)
  bf16 = build_model(tiny_config.replace(dtype="bfloat16")).apply({"params": tiny_params}, **batch)
  assert bf16.last_hidden_state.dtype == jnp.bfloat16
  assert np.abs(np.asarray(bf16.last_hidden_state, np.float32) - f32.last_hidden_state).max() < 0.1


def test_bfloat16_embedding_gradients_accumulate_in_float32(tiny_config, tiny_params):
  """A word used at every position: its embedding gradient sums thousands of contributions.
  Summed in a bf16 table (8 significant bits) the running sum drifts by several percent; flaxbert
  looks embeddings up in the parameters' float32, so bf16 compute stays near float32."""
  length = tiny_config.max_position_embeddings
  ids = jnp.full((32, length), 7, jnp.int32)
  mask, zeros = jnp.ones_like(ids), jnp.zeros_like(ids)
  probe = jax.random.normal(jax.random.key(1), (32, length, tiny_config.hidden_size))

  def grad(dtype):
    model = BertEncoder(tiny_config.replace(dtype=dtype))
    out = lambda p: model.apply({"params": {"bert": p}}, ids, zeros, mask).last_hidden_state
    return jax.grad(lambda p: jnp.sum(out(p).astype(jnp.float32) * probe))(tiny_params["bert"])
  want, got = (grad(d)["embeddings"]["word_embeddings"]["embedding"][7] for d in ("float32", "bfloat16"))
  assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 0.02


def test_forward_on_eight_devices_equals_one(tiny_model, tiny_params, tiny_config):
  assert jax.device_count() == 8, "conftest sets --xla_force_host_platform_device_count=8"
  batch = make_batch(tiny_config, batch=8, length=16)
  single = tiny_model.apply({"params": tiny_params}, **batch)
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  data = NamedSharding(mesh, P("data"))
  sharded_batch = {k: jax.device_put(v, data) for k, v in batch.items()}
  params = jax.device_put(tiny_params, NamedSharding(mesh, P()))
  out = jax.jit(lambda p, b: tiny_model.apply({"params": p}, **b))(params, sharded_batch)
  assert out.last_hidden_state.sharding.spec[0] == "data"
  assert len(out.last_hidden_state.sharding.device_set) == 8
  np.testing.assert_allclose(out.last_hidden_state, single.last_hidden_state, atol=1e-5)
  np.testing.assert_allclose(out.mlm_logits, single.mlm_logits, atol=1e-4)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu"])
def test_activations_differ(tiny_config, tiny_params, act):
  out = build_model(tiny_config.replace(hidden_act=act)).apply({"params": tiny_params}, **make_batch(tiny_config))
  ref = build_model(tiny_config.replace(hidden_act="silu")).apply({"params": tiny_params}, **make_batch(tiny_config))
  assert np.abs(out.last_hidden_state - ref.last_hidden_state).max() > 1e-4



@pytest.mark.parametrize("policy,scan", [("full", False), ("dots", False), ("none", True), ("dots", True)])
def test_remat_and_scan_same_params_loss_and_gradients(tiny_config, tiny_params, policy, scan):
  """Rematerialisation and scanning the layers change memory and compile time, not maths: same tree,
  init, loss and gradients (dropout on, so the layers' dropout streams agree too)."""
  batch = make_batch(tiny_config)
  positions = np.array([[1, 5, 7], [2, 3, 0], [9, 3, 4]])
  ids = np.zeros((1, 4), np.int32)

  def loss_and_grads(model):
    def loss(params):
      out = model.apply({"params": params}, **batch, masked_positions=positions, deterministic=False,
                        rngs={"dropout": jax.random.key(7)})
      mlm = -jax.nn.log_softmax(out.mlm_logits)[..., 3].mean()
      return mlm - jax.nn.log_softmax(out.nsp_logits)[:, 1].mean()
    return jax.jit(jax.value_and_grad(loss))(tiny_params)

  def count(model, primitive: str) -> int:
    """How often the forward pass's jaxpr names `primitive` (remat: jax.checkpoint; scan)."""
    forward = lambda p: model.apply({"params": p}, ids).last_hidden_state  # noqa: E731
    return str(jax.make_jaxpr(forward)(tiny_params)).count(primitive)

  plain, other = build_model(tiny_config), build_model(tiny_config, remat_policy=policy, scan_layers=scan)
  assert _flat_shapes(param_shapes(other)) == _flat_shapes(param_shapes(plain))
  fresh = lambda m: nn.unbox(m.init(jax.random.key(0), ids)["params"])  # noqa: E731
  jax.tree_util.tree_map(np.testing.assert_array_equal, fresh(other), fresh(plain))
  assert count(plain, "remat") == 0 and count(plain, "scan[") == 0
  layers = 1 if scan else tiny_config.num_hidden_layers  # a scan traces its one layer once
  assert count(other, "remat") == (0 if policy == "none" else layers)
  assert count(other, "scan[") == int(scan)
  (loss, grads), (loss_o, grads_o) = loss_and_grads(plain), loss_and_grads(other)
  np.testing.assert_allclose(loss_o, loss, rtol=1e-6, atol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads_o, grads)


def test_remat_policy_unknown_names_the_field(tiny_config):
  with pytest.raises(InputError, match="remat_policy"):
    build_model(tiny_config, remat_policy="some")


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_gelu_lean_backward_matches_autodiff(dtype, tol):
  """flaxbert's GELU keeps only x for its backward pass; value and gradient are jax.nn.gelu's."""
  x = jnp.asarray(np.random.RandomState(0).standard_normal((4, 257)) * 3, dtype)
  cot = jnp.asarray(np.random.RandomState(1).standard_normal((4, 257)), dtype)
  exact = lambda v: jax.nn.gelu(v, approximate=False)  # noqa: E731
  np.testing.assert_array_equal(gelu(x), exact(x))
  ours = jax.vjp(gelu, x)[1](cot)[0]
  with jax.default_matmul_precision("highest"):
    ref = jax.vjp(lambda v: exact(v.astype(jnp.float32)), x)[1](cot.astype(jnp.float32))[0]
  assert ours.dtype == dtype
  np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(ref, np.float32), rtol=tol, atol=tol)
  # Through jit and a second derivative too (the custom rule must not break higher-order autodiff).
  assert np.isfinite(jax.jit(jax.grad(lambda v: jnp.sum(jax.grad(lambda u: jnp.sum(gelu(u)))(v))))(x.astype(jnp.float32))).all()


@pytest.mark.parametrize("q_shape,kv_len,dtype,backend,expected", [
    ((8, 128, 12, 64), 128, jnp.bfloat16, "gpu", "cudnn"),
    ((8, 36, 12, 64), 48, jnp.float16, "gpu", "cudnn"),
    ((8, 37, 12, 64), 48, jnp.bfloat16, "gpu", None),  # odd query length: cuDNN trains only even ones
    ((8, 36, 12, 64), 47, jnp.bfloat16, "gpu", None),  # odd key length
    ((8, 128, 4, 12), 128, jnp.bfloat16, "gpu", None),  # head width not a multiple of 8
    ((8, 128, 2, 192), 128, jnp.bfloat16, "gpu", None),  # head width over 128
    ((8, 128, 12, 64), 128, jnp.float32, "gpu", None),  # cuDNN's flash attention is 16-bit only
    ((8, 128, 12, 64), 128, jnp.bfloat16, "cpu", None),
])
def test_attention_implementation_only_where_cudnn_takes_the_shapes(q_shape, kv_len, dtype, backend, expected):
  assert attention_implementation(q_shape, kv_len, dtype, backend) == expected


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_add_vocab_bias_gradients_match_autodiff(dtype):
  """The MLM decoder's bias add: its written-out backward (a ones-vector matmul for the bias) gives
  autodiff's gradients, for [B, P, V] logits and in bf16."""
  logits = jax.random.normal(jax.random.key(0), (3, 5, 37)).astype(dtype)
  bias = jax.random.normal(jax.random.key(1), (37,)).astype(dtype)
  weights = jax.random.normal(jax.random.key(2), (3, 5, 37)).astype(dtype)
  loss = lambda add: lambda l, b: jnp.sum(jnp.tanh(add(l, b).astype(jnp.float32)) * weights)  # noqa: E731
  got = jax.grad(loss(add_vocab_bias), argnums=(0, 1))(logits, bias)
  want = jax.grad(loss(lambda l, b: l + b), argnums=(0, 1))(logits, bias)
  tol = 1e-6 if dtype == jnp.float32 else 2e-2
  for g, w in zip(got, want):
    assert g.dtype == w.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=tol, atol=tol)
  np.testing.assert_array_equal(add_vocab_bias(logits, bias), logits + bias)
