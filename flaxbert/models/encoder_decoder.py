"""BERT2BERT: a BERT-warm-startable Transformer encoder-decoder (Rothe, Narayan & Severyn 2020).

Parameter tree (mirrors HF's `EncoderDecoderModel` with a `BertModel` encoder and a
`BertLMHeadModel(is_decoder=True, add_cross_attention=True)` decoder, so export is a rename;
flaxbert.interop.names.encoder_decoder_entries lists the HF names):

  encoder/…                                   flaxbert.models.encoder.BertModel without pooler: a
                                              checkpoint's bert/… subtree drops in unchanged
  decoder/bert/embeddings/…                   the decoder's BERT embeddings
  decoder/bert/encoder/layer_i/attention/…    causal self-attention  } the names and shapes of
  decoder/bert/encoder/layer_i/intermediate   feed-forward           } flaxbert's EncoderLayer
  decoder/bert/encoder/layer_i/output
  decoder/bert/encoder/layer_i/LayerNorm
  decoder/bert/encoder/layer_i/crossattention/{query,key,value,output,LayerNorm}   new
  decoder/cls/predictions/…                   flaxbert.models.pretraining.MaskedLMHead, tied to the decoder's
                                              word embeddings

`crossattention/…` is laid out like flaxbert's `attention/…` (HF `crossattention.self.query`,
`crossattention.output.dense`, `crossattention.output.LayerNorm`; the same transposes).

share=True (BERTShare): the decoder's embeddings and its self-attention and feed-forward
weights are the encoder's. The decoder then stores only `decoder/bert/encoder/layer_i/
crossattention/…` and `decoder/cls/…`; `nn.map_variables` gives it a view in which the shared
entries are the encoder's arrays, so gradients from both uses add up on the one copy.

Incremental decoding keeps flax's "cache" collection: `decoder/cache_index` (tokens fed so far),
`decoder/source_mask` [B, S], and per layer `attention/cached_key|cached_value` [B, L, N, D]
(L = max length) and `crossattention/cached_key|cached_value` [B, S, N, D], projected from the
encoder output once. Every cache leaf but `cache_index` has the batch as its leading axis.
`init_cache`, `decode_step` and `generate` drive flaxbert.models.generation's searches with it;
flaxbert.models.warm_start.warm_start fills the parameters from a BERT checkpoint.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.errors import InputError
from flaxbert.models import generation, weights
from flaxbert.models.config import BertConfig
from flaxbert.models.encoder import BertModel, Embeddings, attention_block, dense, feed_forward
from flaxbert.models.pretraining import MaskedLMHead

# The decoder-layer entries that BERTShare takes from the encoder's layer of the same index.
SHARED_LAYER_PARTS = ("attention", "intermediate", "output", "LayerNorm")


class DecoderAttention(nn.Module):
  """BERT's attention block (flaxbert.models.encoder.SelfAttention's parameters) with a key/value cache.

  Self-attention (`cross=False`) attends to `x` itself; cross-attention to `memory`, the encoder
  output. With `decode`, keys/values live in the "cache" collection: a first call on an empty
  cache creates it (self: zeros as long as `x`; cross: projected from `memory`), later calls
  append `x`'s keys/values at `index` (self) or read the stored ones (cross).
  """
  config: BertConfig
  cross: bool = False

  @nn.compact
  def __call__(self, x, memory, mask, deterministic: bool, decode: bool = False, index=None):
    cfg = self.config
    heads = (cfg.num_attention_heads, cfg.head_dim)
    project = lambda name, y: dense(cfg, heads, ("embed", "heads", "kv"), name)(y)  # noqa: E731
    q = project("query", x)
    if self.cross and decode and self.has_variable("cache", "cached_key"):
      k, v = self.get_variable("cache", "cached_key"), self.get_variable("cache", "cached_value")
    else:
      source = memory if self.cross else x
      k, v = project("key", source), project("value", source)
      if decode:
        k, v, mask = self._cached(k, v, mask, index)
    return attention_block(self, q, k, v, x, mask, deterministic)

  def _cached(self, k, v, mask, index):
    """(keys, values, mask) after storing this call's keys/values in the cache."""
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    if self.cross:  # first call: store the projected source once
      cached_k.value, cached_v.value = k, v
      return k, v, mask
    if not initialized:  # first call sizes the cache from x: [B, max_length, N, D]
      return k, v, mask
    start = (0, index, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), start)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), start)
    # query t (position index + t) sees cache slots 0 … index + t
    queries = index + jnp.arange(k.shape[1])
    mask = (jnp.arange(cached_k.value.shape[1])[None, :] <= queries[:, None])[None, None]
    return cached_k.value, cached_v.value, mask


class DecoderLayer(nn.Module):
  """Post-LN decoder layer: causal self-attention, cross-attention, feed-forward (BERT's names)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, self_mask, memory, cross_mask, deterministic: bool, decode: bool, index):
    cfg = self.config
    x = DecoderAttention(cfg, name="attention")(x, None, self_mask, deterministic, decode, index)
    x = DecoderAttention(cfg, cross=True, name="crossattention")(
        x, memory, cross_mask, deterministic, decode)
    return feed_forward(cfg, x, deterministic)


class _DecoderLayers(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, *args):
    for i in range(self.config.num_hidden_layers):
      x = DecoderLayer(self.config, name=f"layer_{i}")(x, *args)
    return x


class _DecoderBert(nn.Module):
  """HF BertLMHeadModel's `bert`: embeddings + `encoder/layer_i` decoder layers."""
  config: BertConfig

  def setup(self):
    self.embeddings = Embeddings(self.config)
    self.encoder = _DecoderLayers(self.config)


class _Heads(nn.Module):
  """HF's `cls`: the MLM head as `cls/predictions`."""
  config: BertConfig

  @nn.compact
  def __call__(self, hidden, attend):
    return MaskedLMHead(self.config, name="predictions")(hidden, attend)


class Decoder(nn.Module):
  """BERT embeddings → causal decoder layers with cross-attention → tied LM head: logits [B, T, V]."""
  config: BertConfig

  @nn.compact
  def __call__(self, tgt_ids, tgt_mask, memory, src_mask, deterministic: bool = True,
               decode: bool = False):
    """tgt_mask [B, T] (1 = real token; None: all) masks padded keys in the full forward;
    src_mask [B, S] (None: all) the padded source positions.

    decode: read/extend the cache. The first call on an empty cache creates it, sized by
    tgt_ids' length (the maximum length), and stores src_mask; later calls feed the next
    tokens, take their positions from `cache_index`, ignore tgt_mask and may pass
    src_mask = memory = None.
    """
    tgt_ids = jnp.asarray(tgt_ids)
    if src_mask is None and memory is not None:
      src_mask = jnp.ones(memory.shape[:2], bool)
    index = jnp.zeros((), jnp.int32)
    if decode:
      initialized = self.has_variable("cache", "cache_index")
      index_var = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      src_mask = self.variable("cache", "source_mask", lambda: jnp.asarray(src_mask, bool)).value
      if initialized:
        index = index_var.value
        index_var.value = index + tgt_ids.shape[1]
    positions = index + jnp.arange(tgt_ids.shape[1])
    self_mask = (positions[None, :] <= positions[:, None])[None, None]  # [1, 1, T, T] causal
    if tgt_mask is not None:
      self_mask = self_mask & jnp.asarray(tgt_mask, bool)[:, None, None, :]
    cross_mask = jnp.asarray(src_mask, bool)[:, None, None, :]
    bert = _DecoderBert(self.config, name="bert")
    x = bert.embeddings(tgt_ids, jnp.zeros_like(tgt_ids), jnp.broadcast_to(positions, tgt_ids.shape),
                        deterministic)
    x = bert.encoder(x, self_mask, memory, cross_mask, deterministic, decode, index)
    return _Heads(self.config, name="cls")(x, bert.embeddings.attend)


class BertEncoderDecoder(nn.Module):
  """BertModel encoder + BERT decoder with cross-attention and a tied LM head.

  __call__(src_ids, src_mask, tgt_in_ids, tgt_mask) → logits [B, T_tgt, V_decoder] (teacher
  forcing; tgt_in_ids are the targets shifted right behind a start token).
  """
  encoder_config: BertConfig  # the encoder: a BERT checkpoint's config for warm-starting
  decoder_config: BertConfig  # the decoder: same hidden size; its vocab_size sets the logits
  share: bool = False  # BERTShare: the decoder reuses the encoder's embeddings and layers

  def setup(self):
    enc, dec = self.encoder_config, self.decoder_config
    if enc.hidden_size != dec.hidden_size:
      raise InputError(f"decoder_config.hidden_size: expected the encoder's {enc.hidden_size} "
                       f"(cross-attention reads the encoder output), got {dec.hidden_size}")
    if self.share and enc != dec:
      raise InputError("decoder_config: share=True needs the encoder's config, got "
                       f"{_config_diff(enc, dec)}")
    self.encoder = BertModel(enc, add_pooling_layer=False)
    decoder = Decoder
    if self.share:
      decoder = nn.map_variables(
          Decoder, "params", trans_in_fn=self._shared_view, trans_out_fn=_drop_shared,
          init=self.is_initializing())
    self.decoder = decoder(dec)

  def __call__(self, src_ids, src_mask, tgt_in_ids, tgt_mask=None, deterministic: bool = True):
    encoded = self.encode(src_ids, src_mask, deterministic)
    return self.decode(encoded, src_mask, tgt_in_ids, tgt_mask, deterministic)

  def encode(self, src_ids, src_mask, deterministic: bool = True):
    """[B, S] source ids and mask → encoder output [B, S, H]."""
    return self.encoder(src_ids, None, src_mask, deterministic=deterministic)[0]

  def decode(self, encoded, src_mask, tgt_ids, tgt_mask=None, deterministic: bool = True,
             decode: bool = False):
    """Decoder logits [B, T, V] for tgt_ids [B, T] over `encoded`; see Decoder for `decode`."""
    return self.decoder(tgt_ids, tgt_mask, encoded, src_mask, deterministic, decode)

  def _shared_view(self, variables: dict) -> dict:
    """{"params": the decoder's own}: its view with the encoder's embeddings and layers filled in."""
    own, enc = variables.get("params", {}), self.encoder.variables["params"]
    layers = dict(own.get("bert", {}).get("encoder", {}))
    for i in range(self.decoder_config.num_hidden_layers):
      name = f"layer_{i}"
      layers[name] = dict(layers.get(name, {}),
                          **{k: enc["encoder"][name][k] for k in SHARED_LAYER_PARTS})
    return dict(variables, params=dict(own, bert={"embeddings": enc["embeddings"], "encoder": layers}))


def _drop_shared(variables: dict) -> dict:
  """{"params": the decoder's view} → what BERTShare stores: cross-attention and the LM head only."""
  full = variables.get("params", {})
  if "bert" not in full:
    return variables
  layers = {name: {k: v for k, v in layer.items() if k not in SHARED_LAYER_PARTS}
            for name, layer in full["bert"]["encoder"].items()}
  return dict(variables, params=dict(full, bert={"encoder": layers}))


def _config_diff(a: BertConfig, b: BertConfig) -> str:
  diff = [f"{k}={v!r} (encoder: {getattr(a, k)!r})" for k, v in b.to_dict().items()
          if getattr(a, k) != v]
  return ", ".join(diff)


# --- parameters, cache, generation -----------------------------------------------------------

def init_params(model: BertEncoderDecoder, seed: int = 0) -> dict:
  """Freshly initialised parameters (truncated normal, as BERT) as a plain tree."""
  return nn.unbox(_jitted_init(model)(jax.random.key(seed))["params"])


@functools.cache
def _jitted_init(model: BertEncoderDecoder):
  ids = jnp.zeros((1, 1), jnp.int32)
  return jax.jit(lambda key: model.init(key, ids, ids, ids, ids))


@functools.partial(jax.jit, static_argnames=("model", "max_length"))
def init_cache(model: BertEncoderDecoder, params, src_ids, src_mask, max_length: int) -> dict:
  """The decoder's cache for up to `max_length` fed tokens: empty self-attention keys/values,
  the source's cross-attention keys/values (encoded and projected once), the source mask.

  One decoder call on a single dummy token creates the cache (flax's pattern for "cache"
  variables; its output is discarded); the self-attention slots are then widened to max_length
  zeros, so priming costs one token, not max_length."""
  limit = model.decoder_config.max_position_embeddings
  if not isinstance(max_length, int) or not 1 <= max_length <= limit:
    raise InputError(f"max_length: expected an integer from 1 to the decoder's "
                     f"max_position_embeddings ({limit}), got {max_length!r}")
  encoded = model.apply({"params": params}, src_ids, src_mask, method=BertEncoderDecoder.encode)
  slot = jnp.zeros((src_ids.shape[0], 1), jnp.int32)
  _, variables = model.apply({"params": params}, encoded, src_mask, slot, decode=True,
                             method=BertEncoderDecoder.decode, mutable=["cache"])

  def widen(path, x):
    names = weights.key(path).split("/")
    if names[-2:-1] == ["attention"] and names[-1] in ("cached_key", "cached_value"):
      return jnp.zeros((x.shape[0], max_length, *x.shape[2:]), x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(widen, variables["cache"])


@functools.cache
def decode_step(model: BertEncoderDecoder) -> generation.StepFn:
  """step(params, cache, ids [B]) → (logits [B, V], cache): one token through the cached decoder.

  Memoised per model, so flaxbert.models.generation sees the same static function on every call.
  """
  def step(params, cache, ids):
    logits, variables = model.apply(
        {"params": params, "cache": cache}, None, None, ids[:, None], decode=True,
        method=BertEncoderDecoder.decode, mutable=["cache"])
    return logits[:, 0], variables["cache"]
  return step


@functools.partial(jax.jit, static_argnames=("model", "max_length", "beam_size", "length_penalty",
                                             "start_id", "eos_id", "pad_id"))
def generate(model: BertEncoderDecoder, params, src_ids, src_mask, *, max_length: int,
             start_id: int, eos_id: int, pad_id: int, beam_size: int = 4,
             length_penalty: float = 0.6) -> generation.Generated:
  """Encode, then beam search (greedy when beam_size is 1) up to max_length tokens, in one jit.

  For BERT vocabularies start is [CLS], EOS [SEP], PAD [PAD]. See flaxbert.models.generation for the
  outputs and the length penalty.
  """
  cache = init_cache(model, params, src_ids, src_mask, max_length)
  ids = dict(max_length=max_length, start_id=start_id, eos_id=eos_id, pad_id=pad_id,
             length_penalty=length_penalty)
  if beam_size == 1:
    return generation.greedy_search(decode_step(model), params, cache, **ids)
  return generation.beam_search(decode_step(model), params, cache, beam_size=beam_size, **ids)
