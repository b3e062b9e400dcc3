"""The BERT encoder in flax.linen: embeddings, post-LN Transformer layers, BertModel.

Parameters carry logical axis names (see `AXES`) through `nn.with_logical_partitioning`, so a
sharding module can place them with a short rules list; this file knows nothing about meshes.
The parameter tree mirrors HF transformers' names (bert/embeddings/word_embeddings, …,
encoder/layer_{i}/attention/query) so conversion is a rename plus reshapes.

How the encoder runs — rematerialisation (`remat_policy`, see `REMAT_POLICIES`) and a scan over
the layers (`scan_layers`) — are module attributes rather than BertConfig fields, since
BertConfig mirrors the checkpoint JSON; neither changes the parameter tree.
"""
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.errors import InputError
from flaxbert.models.activations import activation
from flaxbert.models.config import BertConfig
from flaxbert.models.dropout import Dropout, dropout_keep

# Logical axis names used on parameters (and activations):
#   vocab, position, type   rows of the three embedding tables
#   embed                   the model width H
#   embed_out               the output side of square H×H projections (pooler, MLM transform)
#   heads, kv               attention heads and the per-head width
#   mlp                     the feed-forward width
#   classes                 a small output head (NSP, task labels)
#   batch, length           activations only
AXES = ("vocab", "position", "type", "embed", "embed_out", "heads", "kv", "mlp", "classes",
        "batch", "length")


def truncated_normal(stddev: float):
  """The original BERT initializer: N(0, stddev²) cut at ±2 stddev (tf.truncated_normal_initializer).

  Unlike `jax.nn.initializers.truncated_normal`, the samples are not rescaled after cutting,
  exactly as TF1 did.
  """
  def init(key, shape, dtype=jnp.float32):
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32).astype(dtype) * stddev
  return init


class Dense(nn.Module):
  """y = x·W + b, contracting the last `contract` dims of x; W and b carry logical axis names."""
  features: Sequence[int]
  kernel_axes: Sequence[str]  # names for W's dims: contracted input dims, then `features`
  contract: int = 1
  initializer_range: float = 0.02
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = tuple(self.features)
    shape = x.shape[x.ndim - self.contract:] + features
    kernel = self.param("kernel", nn.with_logical_partitioning(
        truncated_normal(self.initializer_range), tuple(self.kernel_axes)), shape, self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), tuple(self.kernel_axes[self.contract:])), features,
        self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return jnp.tensordot(x, kernel, axes=self.contract) + bias


def layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=config.layer_norm_eps, dtype=config.dtype, param_dtype=config.param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)), name=name)


def dense(config: BertConfig, features, kernel_axes, name: str, contract: int = 1) -> Dense:
  features = (features,) if isinstance(features, int) else tuple(features)
  return Dense(features=features, kernel_axes=kernel_axes, contract=contract,
               initializer_range=config.initializer_range, dtype=config.dtype,
               param_dtype=config.param_dtype, name=name)


def attention_implementation(q_shape, kv_len: int, dtype, backend: str | None = None) -> str | None:
  """`jax.nn.dot_product_attention`'s implementation for [B, T, N, D] queries over `kv_len` keys of
  `dtype`: "cudnn" (cuDNN's fused flash attention) on a GPU where cuDNN takes the shapes — 16-bit
  inputs, a head width D that is a multiple of 8 and at most 128, even T and S (with a mask, which
  it turns into a bias, cuDNN trains only even lengths) — else None (XLA, which jax's default None
  also means on GPUs). backend: jax's default backend unless given."""
  *_, t, _, d = q_shape
  fits = jnp.dtype(dtype).itemsize == 2 and d % 8 == 0 and d <= 128 and t % 2 == 0 and kv_len % 2 == 0
  return "cudnn" if fits and (backend or jax.default_backend()) == "gpu" else None


def attention(q, k, v, mask, *, dropout_rate: float, deterministic: bool, dropout_rng=None):
  """Multi-head attention on [B, T, N, D] inputs with a [B, 1, T, S] boolean mask.

  Without attention dropout (inference, or a rate of 0 as in MosaicBERT/cramming) this is
  `jax.nn.dot_product_attention`: cuDNN flash attention for bf16/fp16 on a GPU where cuDNN takes
  the shapes (`attention_implementation`), XLA otherwise; with dropout, the same computation
  written out so that the probabilities can be dropped.
  """
  if deterministic or dropout_rate == 0.0:
    implementation = attention_implementation(q.shape, k.shape[1], q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("btnd,bsnd->bnts", q, k).astype(jnp.float32) * scale
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  keep, keep_prob = dropout_keep(dropout_rng, dropout_rate, probs.shape)
  probs = jnp.where(keep, probs / keep_prob, 0.0).astype(v.dtype)
  return jnp.einsum("bnts,bsnd->btnd", probs, v)


class SelfAttention(nn.Module):
  """BERT's attention block: Q/K/V projections, attention, output projection, residual, LayerNorm."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    cfg = self.config
    heads = (cfg.num_attention_heads, cfg.head_dim)
    q, k, v = (dense(cfg, heads, ("embed", "heads", "kv"), name)(x) for name in ("query", "key", "value"))
    return attention_block(self, q, k, v, x, mask, deterministic)


def attention_block(module: nn.Module, q, k, v, x, mask, deterministic: bool) -> jax.Array:
  """attention → output projection → dropout → LayerNorm(· + x), called from the compact method of
  `module` (an attention module with a `config`), whose parameters `output` and `LayerNorm` it makes."""
  cfg = module.config
  dropout_rng = None
  if not deterministic and cfg.attention_probs_dropout_prob > 0:
    dropout_rng = module.make_rng("dropout")
  y = attention(q, k, v, mask, dropout_rate=cfg.attention_probs_dropout_prob,
                deterministic=deterministic, dropout_rng=dropout_rng)
  y = dense(cfg, cfg.hidden_size, ("heads", "kv", "embed"), "output", contract=2)(y)
  y = Dropout(cfg.hidden_dropout_prob)(y, deterministic=deterministic)
  return layer_norm(cfg, "LayerNorm")(y + x)


def feed_forward(cfg: BertConfig, x, deterministic: bool) -> jax.Array:
  """BERT's feed-forward sublayer with residual + LayerNorm, called from a layer's compact method,
  whose parameters `intermediate`, `output` and `LayerNorm` it makes."""
  h = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x)
  h = activation(cfg.hidden_act)(h)
  h = dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output")(h)
  h = Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
  x = layer_norm(cfg, "LayerNorm")(h + x)
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  """One post-LN Transformer layer: attention, then GELU feed-forward with residual + LayerNorm."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    cfg = self.config
    x = SelfAttention(cfg, name="attention")(x, mask, deterministic)
    return feed_forward(cfg, x, deterministic)


# remat_policy → what the backward pass keeps of each encoder layer's forward (jax.checkpoint):
#   none  everything (no rematerialisation; fastest, most memory)
#   full  only the layer's inputs; the whole layer is recomputed in the backward pass
#   dots  the outputs of matmuls without batch dimensions, i.e. the Q/K/V, attention-output and
#         feed-forward projections (jax.checkpoint_policies.dots_with_no_batch_dims_saveable);
#         the [B, N, T, T] attention scores/probabilities (batched einsums), softmax, GELU,
#         LayerNorm and dropout are recomputed. `checkpoint_dots` would also keep the attention
#         matrices, the largest activations at long sequence lengths, hence this choice.
REMAT_POLICIES: dict[str, Optional[Callable[..., bool]]] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat_policy(policy: str, field: str = "remat_policy") -> str:
  """`policy` if it names a REMAT_POLICIES entry, else InputError naming `field`."""
  if policy not in REMAT_POLICIES:
    raise InputError(f"{field}: expected one of {sorted(REMAT_POLICIES)}, got {policy!r}")
  return policy


def layer_function(config: BertConfig, remat_policy: str, deterministic: bool) -> Callable:
  """f(params, x, mask, rng, i) -> x: one EncoderLayer applied with explicit parameters, its
  dropout drawing from fold_in(rng, i), rematerialised in the backward pass as `remat_policy` says."""
  check_remat_policy(remat_policy)
  module = EncoderLayer(config, parent=None)

  def apply(params, x, mask, rng, i):
    rngs = None if rng is None else {"dropout": jax.random.fold_in(rng, i)}
    return module.apply({"params": params}, x, mask, deterministic, rngs=rngs)
  return apply if remat_policy == "none" else jax.checkpoint(apply, policy=REMAT_POLICIES[remat_policy])


class Embeddings(nn.Module):
  """Word + learned position + segment embeddings, LayerNorm, dropout."""
  config: BertConfig

  def setup(self):
    cfg = self.config
    init = truncated_normal(cfg.initializer_range)

    # Lookups (and the sum and LayerNorm statistics) in the parameters' dtype: with bf16 compute the
    # backward pass then scatter-adds every token's gradient into a float32 table (as torch.autocast
    # does), not into a bf16 copy where the ~B·T/vocab contributions to a frequent row lose bits.
    def embed(num, axis):
      return nn.Embed(num, cfg.hidden_size, dtype=cfg.param_dtype, param_dtype=cfg.param_dtype,
                      embedding_init=nn.with_logical_partitioning(init, (axis, "embed")))
    self.word_embeddings = embed(cfg.vocab_size, "vocab")
    self.position_embeddings = embed(cfg.max_position_embeddings, "position")
    self.token_type_embeddings = embed(cfg.type_vocab_size, "type")
    self.LayerNorm = layer_norm(cfg, "LayerNorm")  # pylint: disable=invalid-name
    self.dropout = Dropout(cfg.hidden_dropout_prob)

  def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
    x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
         + self.token_type_embeddings(token_type_ids))
    x = self.dropout(self.LayerNorm(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def attend(self, x):
    """Logits against the word-embedding table (the MLM decoder, tied), in the compute dtype."""
    dtype = self.config.dtype
    return jnp.dot(x.astype(dtype), jnp.asarray(self.word_embeddings.embedding, dtype).T)


class Pooler(nn.Module):
  """tanh(W·h[CLS] + b): of the first position [B, H], or of each of `positions` [B, P] → [B, P, H]
  (packed rows: every example's [CLS])."""
  config: BertConfig

  @nn.compact
  def __call__(self, hidden, positions=None):
    first = hidden[:, 0] if positions is None else gather_positions(hidden, positions)
    return jnp.tanh(dense(self.config, self.config.hidden_size, ("embed", "embed_out"), "dense")(first))


class BertModel(nn.Module):
  """Embeddings → L encoder layers → pooler. Returns (last_hidden_state, pooled_output)."""
  config: BertConfig
  add_pooling_layer: bool = True
  remat_policy: str = "none"  # a REMAT_POLICIES key
  scan_layers: bool = False  # Encoder.scan_layers

  def setup(self):
    cfg = self.config
    self.embeddings = Embeddings(cfg)
    self.encoder = Encoder(cfg, remat_policy=self.remat_policy, scan_layers=self.scan_layers)
    if self.add_pooling_layer:
      self.pooler = Pooler(cfg)

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
               deterministic: bool = True, pooled_positions=None):
    """attention_mask [B, T]: 0 at padding, else the number of the example a token belongs to; a
    row packing several examples (1, 1, 1, 2, 2, 0, …, with position_ids restarting at each
    example) computes each as if it were alone in its row (see `attention_segments`), and
    `pooled_positions` [B, P] (their [CLS] positions) pools each: pooled_output [B, P, H]."""
    input_ids = jnp.asarray(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if position_ids is None:
      position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
    x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
    mask = attention_segments(attention_mask)
    x = self.encoder(x, mask, deterministic)
    pooled = self.pooler(x, pooled_positions) if self.add_pooling_layer else None
    return x, pooled

  def attend(self, x):
    return self.embeddings.attend(x)


def attention_segments(attention_mask: jax.Array) -> jax.Array:
  """[B, T] example numbers (0 = padding) → the [B, 1, T(query), S(key)] boolean attention mask:
  a token attends to the tokens of its own example only, never to padding.

  With a 0/1 mask (one example per row) every real token attends to every real token, as BERT's
  padding mask; packed rows (sequence packing: examples 1, 2, … side by side, no padding between
  them) keep their examples apart, so the padding that packing removes is not computed at all.
  Padding queries attend to every real token of their row, as in BERT and HF (their outputs are
  ignored, but stay identical to theirs).
  """
  segments = jnp.asarray(attention_mask, jnp.int32)
  queries, keys = segments[:, None, :, None], segments[:, None, None, :]
  return ((queries == keys) | (queries == 0)) & (keys > 0)


class Encoder(nn.Module):
  """num_hidden_layers EncoderLayers, parameters named layer_0…, run by `layer_function`.

  scan_layers: one `jax.lax.scan` over the layers' stacked parameters instead of an unrolled loop,
  so the program holds one layer rather than L (compile time and program size stop growing with
  depth). The parameter tree, the dropout streams and the result are the same either way; the
  scan costs a copy of the encoder's parameters (and gradients) per step.
  """
  config: BertConfig
  remat_policy: str = "none"  # a REMAT_POLICIES key
  scan_layers: bool = False

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    cfg = self.config
    names = [f"layer_{i}" for i in range(cfg.num_hidden_layers)]
    if self.is_initializing():  # create the parameters as submodules, named as checkpoints have them
      for name in names:
        x = EncoderLayer(cfg, name=name)(x, mask, True)
      return x
    layer = layer_function(cfg, self.remat_policy, deterministic)
    dropout = cfg.hidden_dropout_prob > 0 or cfg.attention_probs_dropout_prob > 0
    rng = self.make_rng("dropout") if dropout and not deterministic else None
    params = [nn.unbox(self.variables["params"][name]) for name in names]
    if not self.scan_layers:
      for i, p in enumerate(params):
        x = layer(p, x, mask, rng, i)
      return x
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *params)
    x, _ = jax.lax.scan(lambda h, p_i: (layer(p_i[0], h, mask, rng, p_i[1]), None), x,
                        (stacked, jnp.arange(len(names))))
    return x


def gather_positions(x: jax.Array, positions: Optional[jax.Array]) -> jax.Array:
  """x[b, positions[b, p]] for every b, p: [B, T, H] → [B, P, H]; all of x when positions is None."""
  if positions is None:
    return x
  return jnp.take_along_axis(x, jnp.asarray(positions)[..., None].astype(jnp.int32), axis=1)
