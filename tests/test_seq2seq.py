"""BERT2BERT: parameter layout, BERT warm-starting, causality, the cache, generation end to end."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxbert
from flaxbert.errors import InputError
from flaxbert.interop import names
from flaxbert.models import encoder_decoder as seq2seq
from flaxbert.models.config import BertConfig
from flaxbert.models.pretraining import build_model, param_shapes
from flaxbert.models.warm_start import fresh_mask, warm_start

START, EOS, PAD = 2, 3, 0


def tiny(**overrides) -> BertConfig:
  fields = dict(vocab_size=53, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=24, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
  return BertConfig(**{**fields, **overrides})


def shapes(model: seq2seq.BertEncoderDecoder) -> dict:
  ids = jnp.zeros((1, 1), jnp.int32)
  return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), ids, ids, ids, ids)["params"])


def random_tree(shape_tree: dict, seed: int) -> dict:
  """Random parameters of these shapes without compiling an init: LayerNorm scales near 1,
  everything else N(0, 0.05²)."""
  rng = np.random.RandomState(seed)
  def leaf(path, x):
    noise = (0.05 * rng.standard_normal(x.shape)).astype(x.dtype)
    return noise + 1 if path[-1].key == "scale" else noise
  return jax.tree_util.tree_map_with_path(leaf, shape_tree)


def forward(model, params, src, src_mask, tgt, tgt_mask=None, deterministic=True, rng=None):
  """The full (uncached) forward, compiled once per model and shapes (cheaper than op by op)."""
  tgt_mask = jnp.ones_like(tgt) if tgt_mask is None else tgt_mask
  return _forward(model, params, src, src_mask, tgt, tgt_mask, deterministic,
                  jax.random.key(0) if rng is None else rng)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _forward(model, params, src, src_mask, tgt, tgt_mask, deterministic, rng):
  return model.apply({"params": params}, src, src_mask, tgt, tgt_mask, deterministic,
                     rngs={"dropout": rng})


def flat(tree: dict) -> dict:
  return {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def batch(cfg: BertConfig, seed: int = 0, b: int = 2, s: int = 7, t: int = 6):
  rng = np.random.RandomState(seed)
  src = rng.randint(4, cfg.vocab_size, (b, s)).astype(np.int32)
  src_mask = np.ones((b, s), np.int32)
  src_mask[1, s - 2:] = 0  # a padded source row
  tgt = rng.randint(4, cfg.vocab_size, (b, t)).astype(np.int32)
  tgt[:, 0] = START
  return jnp.asarray(src * src_mask), jnp.asarray(src_mask), jnp.asarray(tgt)


@pytest.fixture(scope="module")
def models():
  cfg = tiny()
  out = {}
  for share in (False, True):
    model = seq2seq.BertEncoderDecoder(cfg, cfg, share=share)
    out[share] = (model, random_tree(shapes(model), seed=1 + share))
  return out


def test_parameter_layout_warm_startable_and_shared():
  cfg = tiny()
  bert = flat(param_shapes(build_model(cfg)))
  plain = flat(shapes(seq2seq.BertEncoderDecoder(cfg, cfg)))
  shared = flat(shapes(seq2seq.BertEncoderDecoder(cfg, cfg, share=True)))
  # the encoder is BERT's bert/… subtree without the pooler
  enc = {k.removeprefix("encoder/"): v.shape for k, v in plain.items() if k.startswith("encoder/")}
  assert enc == {k.removeprefix("bert/"): v.shape for k, v in bert.items()
                 if k.startswith("bert/") and "/pooler/" not in k}
  # the decoder's embeddings, self-attention and feed-forward are BERT's, names and shapes
  dec = {k.removeprefix("decoder/"): v.shape for k, v in plain.items()
         if k.startswith("decoder/") and "/crossattention/" not in k}
  assert dec == {k: v.shape for k, v in bert.items()
                 if "/pooler/" not in k and "seq_relationship" not in k}
  for i in range(cfg.num_hidden_layers):
    layer = f"decoder/bert/encoder/layer_{i}"
    cross = {k.split("/crossattention/")[1]: v.shape for k, v in plain.items()
             if k.startswith(f"{layer}/crossattention/")}
    assert cross == {k.split("/attention/")[1]: v.shape for k, v in plain.items()
                     if k.startswith(f"{layer}/attention/")}
    assert len(cross) == 10
  # BERTShare: only cross-attention and the LM head are the decoder's own
  assert {k for k in shared if k.startswith("decoder/")} == {
      k for k in plain if k.startswith("decoder/") and ("/crossattention/" in k or "/cls/" in k)}
  assert {k for k in shared if k.startswith("encoder/")} == {k for k in plain if k.startswith("encoder/")}
  # parameters carry logical axis names (the sharding rules place them)
  ids = jnp.zeros((1, 1), jnp.int32)
  for share in (False, True):
    boxed = jax.eval_shape(seq2seq.BertEncoderDecoder(cfg, cfg, share=share).init, jax.random.key(0),
                           ids, ids, ids, ids)["params"]
    query = boxed["decoder"]["bert"]["encoder"]["layer_0"]["crossattention"]["query"]["kernel"]
    assert isinstance(query, nn.LogicallyPartitioned) and query.names == ("embed", "heads", "kv")
    table = boxed["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    assert isinstance(table, nn.LogicallyPartitioned) and table.names == ("vocab", "embed")


@pytest.mark.parametrize("share", [False, True])
def test_names_map_to_transformers_encoder_decoder(models, share):
  transformers = pytest.importorskip("transformers", reason="needs transformers (pip install -e .[test])")
  cfg = tiny()
  kw = dict(vocab_size=cfg.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=24)
  hf = transformers.EncoderDecoderModel(
      encoder=transformers.BertModel(transformers.BertConfig(**kw), add_pooling_layer=False),
      decoder=transformers.BertLMHeadModel(
          transformers.BertConfig(is_decoder=True, add_cross_attention=True, **kw)))
  hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()
               if not k.startswith("decoder.cls.predictions.decoder.")}  # tied copies
  params = shapes(seq2seq.BertEncoderDecoder(cfg, cfg, share=share))
  entries = names.encoder_decoder_entries(cfg, cfg, share=share)
  assert {e.hf for e in entries} == set(hf_shapes)
  for e in entries:
    shape = names.get_path(params, e.path).shape
    assert names.external_shape(shape, e.kind, "hf") == hf_shapes[e.hf], e.hf
  used = {e.path for e in entries}
  assert used == {tuple(k.split("/")) for k in flat(params)}  # every parameter is exported
  if share:
    return
  # renamed and reshaped, the weights give transformers' BERT2BERT logits
  torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
  model, params = models[False]
  state = {e.hf: torch.from_numpy(np.array(names.to_external(names.get_path(params, e.path), e.kind, "hf")))
           for e in entries}
  missing, unexpected = hf.load_state_dict(state, strict=False)
  assert not unexpected and all(k.startswith("decoder.cls.predictions.decoder.") for k in missing)
  src, src_mask, tgt = batch(model.decoder_config, seed=5)
  tgt_mask = jnp.ones_like(tgt).at[0, 4:].set(0)
  as_torch = lambda x: torch.from_numpy(np.asarray(x, np.int64))  # noqa: E731
  with torch.no_grad():
    expected = hf.eval()(input_ids=as_torch(src), attention_mask=as_torch(src_mask),
                         decoder_input_ids=as_torch(tgt), decoder_attention_mask=as_torch(tgt_mask)).logits
  got = forward(model, params, src, src_mask, tgt, tgt_mask)
  np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)
  assert np.abs(got).max() > 0.1


def test_causal_and_source_dependent(models):
  model, params = models[False]
  src, src_mask, tgt = batch(model.decoder_config)
  logits = forward(model, params, src, src_mask, tgt, None)
  assert logits.shape == (2, 6, model.decoder_config.vocab_size)
  changed = tgt.at[:, 3].set((tgt[:, 3] + 1) % model.decoder_config.vocab_size)
  other = forward(model, params, src, src_mask, changed, None)
  np.testing.assert_array_equal(other[:, :3], logits[:, :3])  # earlier positions do not see it
  assert np.abs(other[:, 3:] - logits[:, 3:]).min() > 0  # later ones do
  # a target key with tgt_mask 0 is invisible to the later positions (which did see it above)
  tgt_mask = jnp.ones_like(tgt).at[:, 3].set(0)
  masked = forward(model, params, src, src_mask, tgt, tgt_mask)
  masked_changed = forward(model, params, src, src_mask, changed, tgt_mask)
  np.testing.assert_allclose(masked_changed[:, 4:], masked[:, 4:], atol=1e-6, rtol=0)
  padded = forward(model, params, src.at[1, -2:].set(9), src_mask, tgt, None)
  np.testing.assert_allclose(padded[1], logits[1], atol=1e-6, rtol=0)
  assert np.abs(forward(model, params, src.at[1, 0].set(9), src_mask, tgt, None)[1]
                - logits[1]).max() > 1e-4
  # training mode: dropout (same parameters) draws from the "dropout" stream
  dropped = model.clone(encoder_config=tiny(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
                        decoder_config=tiny(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
  noisy_logits = forward(dropped, params, src, src_mask, tgt, None, False, jax.random.key(0))
  assert np.all(np.isfinite(noisy_logits)) and np.abs(noisy_logits - logits).max() > 1e-3


@pytest.mark.parametrize("share", [False, True])
def test_cached_decoding_equals_the_full_forward(models, share):
  model, params = models[share]
  src, src_mask, tgt = batch(model.decoder_config, seed=3)
  full = forward(model, params, src, src_mask, tgt, None)
  cache = seq2seq.init_cache(model, params, src, src_mask, 10)
  assert cache["decoder"]["bert"]["encoder"]["layer_0"]["attention"]["cached_key"].shape == (2, 10, 2, 16)
  assert cache["decoder"]["bert"]["encoder"]["layer_1"]["crossattention"]["cached_key"].shape == (2, 7, 2, 16)
  step = jax.jit(seq2seq.decode_step(model))
  steps = []
  for t in range(tgt.shape[1]):
    logits, cache = step(params, cache, tgt[:, t])
    steps.append(logits)
  assert int(cache["decoder"]["cache_index"]) == tgt.shape[1]
  np.testing.assert_allclose(jnp.stack(steps, axis=1), full, atol=1e-5, rtol=0)


def test_shared_model_is_the_unshared_one_with_tied_weights(models):
  model, params = models[True]
  unshared = seq2seq.BertEncoderDecoder(model.encoder_config, model.decoder_config)
  enc = params["encoder"]
  layers = {name: dict(layer, **{p: enc["encoder"][name][p] for p in seq2seq.SHARED_LAYER_PARTS})
            for name, layer in params["decoder"]["bert"]["encoder"].items()}
  full = dict(params, decoder=dict(params["decoder"],
                                   bert={"embeddings": enc["embeddings"], "encoder": layers}))
  src, src_mask, tgt = batch(model.decoder_config, seed=4)
  np.testing.assert_allclose(forward(model, params, src, src_mask, tgt),
                             forward(unshared, full, src, src_mask, tgt), atol=1e-6, rtol=0)
  # the one copy receives the gradient of both uses
  loss = lambda p, m: m.apply({"params": p}, src, src_mask, tgt).sum()  # noqa: E731
  g_shared = jax.jit(jax.grad(loss), static_argnums=1)(params, model)
  g_full = jax.jit(jax.grad(loss), static_argnums=1)(full, unshared)
  kernel = ("encoder", "layer_0", "intermediate", "kernel")
  both = (names.get_path(g_full["encoder"], kernel)
          + names.get_path(g_full["decoder"]["bert"], kernel))
  np.testing.assert_allclose(names.get_path(g_shared["encoder"], kernel), both, atol=1e-5, rtol=1e-5)


def test_warm_start_modes():
  cfg = tiny()
  bert = flat(random_tree(param_shapes(build_model(cfg)), seed=5))
  checkpoint = {"bert": {}, "cls": {}}
  for k, v in bert.items():
    names.set_path(checkpoint, tuple(k.split("/")), v)
  without_head = {"bert": checkpoint["bert"]}
  for mode, share in (("bert2bert", False), ("bert2rnd", False), ("bertshare", True)):
    init = random_tree(shapes(seq2seq.BertEncoderDecoder(cfg, cfg, share=share)), seed=6)
    # fresh_mask (the fresh weights' learning-rate scale) names exactly what the warm start left alone
    for source, has_head in ((checkpoint, True), (without_head, False)):
      warmed, fresh = flat(warm_start(init, source, mode)), flat(fresh_mask(mode, has_head)(init))
      assert {k for k, v in fresh.items() if v} == {k for k, v in warmed.items()
                                                   if np.array_equal(v, flat(init)[k])}, mode
    assert not any(flat(fresh_mask(None, True)(init)).values())
    out, init = flat(warm_start(init, checkpoint, mode)), flat(init)
    assert out.keys() == init.keys()
    for k, v in out.items():
      assert v.dtype == init[k].dtype
      if k.startswith("encoder/"):
        source = "bert/" + k.removeprefix("encoder/")
      elif mode != "bert2rnd" and "/crossattention/" not in k and (mode == "bert2bert" or "/cls/" in k):
        source = k.removeprefix("decoder/")
      else:
        np.testing.assert_array_equal(v, init[k], err_msg=f"{mode}: {k} should stay fresh")
        continue
      np.testing.assert_array_equal(v, bert[source], err_msg=f"{mode}: {k} should be {source}")
      assert not np.array_equal(v, init[k])


def test_warm_start_from_a_saved_checkpoint_and_errors(tmp_path):
  cfg = tiny(max_position_embeddings=64)
  model = build_model(cfg, heads=False)  # a headless BertModel checkpoint: the LM head stays fresh
  flaxbert.save_pretrained(tmp_path / "hf", model, random_tree(param_shapes(model), seed=7), format="hf")
  loaded_model, loaded = flaxbert.from_pretrained(tmp_path / "hf")
  s2s = seq2seq.BertEncoderDecoder(cfg, cfg)
  init = seq2seq.init_params(s2s, seed=8)
  out = warm_start(init, loaded, "bert2bert")
  np.testing.assert_array_equal(out["decoder"]["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                loaded["bert"]["embeddings"]["word_embeddings"]["embedding"])
  np.testing.assert_array_equal(out["decoder"]["cls"]["predictions"]["bias"],
                                init["decoder"]["cls"]["predictions"]["bias"])
  assert isinstance(loaded_model, flaxbert.BertEncoder)
  # a checkpoint with another vocabulary: the error names the tensor and both shapes
  other = shapes(seq2seq.BertEncoderDecoder(tiny(vocab_size=40, max_position_embeddings=64), cfg))
  with pytest.raises(InputError, match=r"bert/embeddings/word_embeddings/embedding has shape "
                                       r"\(53, 32\), expected \(40, 32\).*vocab_size is 53"):
    warm_start(other, loaded, "bert2bert")
  with pytest.raises(InputError, match=r"share=True"):
    warm_start(init, loaded, "bertshare")
  with pytest.raises(InputError, match=r"mode: expected one of"):
    warm_start(init, loaded, "bert2gpt")
  with pytest.raises(InputError, match=r"'bert' subtree"):
    warm_start(init, loaded["bert"], "bert2bert")
  three = shapes(seq2seq.BertEncoderDecoder(tiny(num_hidden_layers=3, max_position_embeddings=64), cfg))
  with pytest.raises(InputError, match=r"bert/encoder has 2 layers, expected 3"):
    warm_start(three, loaded, "bert2rnd")
  with pytest.raises(InputError, match=r"decoder_config.hidden_size"):
    shapes(seq2seq.BertEncoderDecoder(cfg, tiny(hidden_size=16)))


def test_generate_compiles_once_and_matches_uncached_greedy(models):
  model, params = models[False]
  max_length = 5
  before = seq2seq.generate._cache_size()  # pylint: disable=protected-access
  outs = []
  for seed in (10, 11):
    src, src_mask, _ = batch(model.decoder_config, seed=seed)
    outs.append((src, src_mask, seq2seq.generate(model, params, src, src_mask, max_length=max_length,
                                                 start_id=START, eos_id=EOS, pad_id=PAD, beam_size=1)))
    beams = seq2seq.generate(model, params, src, src_mask, max_length=max_length, start_id=START,
                             eos_id=EOS, pad_id=PAD, beam_size=3)
    assert beams.sequences.shape == (2, 3, max_length)
    assert np.all(beams.scores[:, 0] >= beams.scores[:, 1])
  assert seq2seq.generate._cache_size() == before + 2  # greedy and beam, once each  # pylint: disable=protected-access
  for src, src_mask, out in outs:
    # the uncached full forward re-run after each token (causal: later slots do not matter)
    tgt = jnp.full((2, max_length + 1), PAD, jnp.int32).at[:, 0].set(START)
    for t in range(max_length):
      nxt = jnp.argmax(forward(model, params, src, src_mask, tgt)[:, t], axis=-1)
      tgt = tgt.at[:, t + 1].set(nxt.astype(jnp.int32))
    expected = np.array(tgt[:, 1:])
    for row in expected:  # greedy pads after EOS
      if EOS in row:
        row[list(row).index(EOS) + 1:] = PAD
    np.testing.assert_array_equal(out.sequences, expected)
  assert not np.array_equal(outs[0][2].sequences, outs[1][2].sequences)
