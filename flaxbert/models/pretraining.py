"""Pretraining heads on top of BertModel: masked-LM (tied decoder) and next-sentence prediction.

`BertForPreTraining` is what `flaxbert.from_pretrained` returns for checkpoints that carry the
pretraining heads; `BertEncoder` for headless ones (e.g. sentence-transformers' MiniLM). Both
return a `BertOutput`.
"""
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.models.activations import activation
from flaxbert.models.config import BertConfig
from flaxbert.models.encoder import BertModel, check_remat_policy, dense, gather_positions, layer_norm


@flax.struct.dataclass
class BertOutput:
  last_hidden_state: jax.Array  # [B, T, H]
  pooled_output: Optional[jax.Array] = None  # [B, H]; None without a pooler
  mlm_logits: Optional[jax.Array] = None  # [B, T, V], or [B, P, V] at masked_positions
  nsp_logits: Optional[jax.Array] = None  # [B, 2]; index 1 = "B is a random sentence"


@jax.custom_vjp
def add_vocab_bias(logits: jax.Array, bias: jax.Array) -> jax.Array:
  """logits + bias over the last (vocabulary) axis, whose bias gradient — the sum of the logits'
  gradient over all other axes — is a ones-vector matmul rather than a reduction: XLA's CPU
  backend sums the columns of a [640, 30522] matrix in about 70 ms where the matmul takes 2."""
  return logits + bias


def _add_vocab_bias_fwd(logits, bias):
  return logits + bias, None


def _add_vocab_bias_bwd(_, g):
  rows = g.reshape(-1, g.shape[-1])
  ones = jnp.ones((rows.shape[0],), rows.dtype)
  return g, jnp.dot(ones, rows, preferred_element_type=jnp.float32).astype(g.dtype)


add_vocab_bias.defvjp(_add_vocab_bias_fwd, _add_vocab_bias_bwd)


class MaskedLMHead(nn.Module):
  """dense + activation + LayerNorm, then logits against the (tied) word embeddings + own bias."""
  config: BertConfig

  @nn.compact
  def __call__(self, hidden, attend):
    cfg = self.config
    h = _Transform(cfg, name="transform")(hidden)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                      (cfg.vocab_size,), cfg.param_dtype)
    logits = attend(h)
    return add_vocab_bias(logits, bias.astype(logits.dtype))


class _Transform(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    x = dense(cfg, cfg.hidden_size, ("embed", "embed_out"), "dense")(x)
    return layer_norm(cfg, "LayerNorm")(activation(cfg.hidden_act)(x))


class BertForPreTraining(nn.Module):
  """BertModel + MLM head + NSP head, parameters laid out as bert/… and cls/….

  remat_policy: how the encoder layers are rematerialised (flaxbert.models.encoder.REMAT_POLICIES); the
  parameter tree is the same for every policy.
  """
  config: BertConfig
  remat_policy: str = "none"
  scan_layers: bool = False  # flaxbert.models.encoder.Encoder.scan_layers

  def setup(self):
    self.bert = BertModel(self.config, remat_policy=self.remat_policy, scan_layers=self.scan_layers)
    self.cls = PreTrainingHeads(self.config)

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
               masked_positions=None, deterministic: bool = True) -> BertOutput:
    """masked_positions [B, P]: compute MLM logits only there, as the original gathers them."""
    hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask, position_ids, deterministic)
    mlm_logits, nsp_logits = self.cls(gather_positions(hidden, masked_positions), pooled, self.bert.attend)
    return BertOutput(hidden, pooled, mlm_logits, nsp_logits)


class PreTrainingHeads(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, mlm_hidden, pooled, attend):
    cfg = self.config
    mlm_logits = MaskedLMHead(cfg, name="predictions")(mlm_hidden, attend)
    nsp_logits = dense(cfg, 2, ("embed", "classes"), "seq_relationship")(pooled)
    return mlm_logits, nsp_logits


class BertEncoder(nn.Module):
  """A headless BERT (no MLM/NSP parameters): what HF's BertModel checkpoints hold."""
  config: BertConfig
  add_pooling_layer: bool = True
  remat_policy: str = "none"  # flaxbert.models.encoder.REMAT_POLICIES
  scan_layers: bool = False  # flaxbert.models.encoder.Encoder.scan_layers

  def setup(self):
    self.bert = BertModel(self.config, add_pooling_layer=self.add_pooling_layer,
                          remat_policy=self.remat_policy, scan_layers=self.scan_layers)

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, position_ids=None,
               deterministic: bool = True) -> BertOutput:
    hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask, position_ids, deterministic)
    return BertOutput(hidden, pooled)


def build_model(config: BertConfig, heads: bool = True, pooler: bool = True,
                remat_policy: str = "none", scan_layers: bool = False) -> nn.Module:
  """BertForPreTraining when `heads` (which needs the pooler), else a headless BertEncoder.

  remat_policy: flaxbert.models.encoder.REMAT_POLICIES key (training memory vs recomputation); scan_layers:
  a lax.scan over the encoder layers (compile time); neither changes the parameter tree.
  """
  check_remat_policy(remat_policy)
  if heads:
    if not pooler:
      raise ValueError("the pretraining heads need the pooler (NSP reads the pooled [CLS])")
    return BertForPreTraining(config, remat_policy=remat_policy, scan_layers=scan_layers)
  return BertEncoder(config, add_pooling_layer=pooler, remat_policy=remat_policy, scan_layers=scan_layers)


def describe(model: nn.Module) -> tuple[bool, bool]:
  """(heads, pooler) of a model built by `build_model`."""
  if isinstance(model, BertForPreTraining):
    return True, True
  if isinstance(model, BertEncoder):
    return False, model.add_pooling_layer
  raise TypeError(f"expected BertForPreTraining or BertEncoder, got {type(model).__name__}")


def param_shapes(model: nn.Module) -> dict:
  """The model's parameter tree as jax.ShapeDtypeStruct leaves, without allocating anything."""
  ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), ids)
  return nn.unbox(variables["params"])


def init_params(model: nn.Module, seed: int = 0) -> dict:
  """Freshly initialised parameters (the original's truncated normal) as a plain tree."""
  ids = jnp.zeros((1, 1), jnp.int32)
  return nn.unbox(jax.jit(model.init)(jax.random.key(seed), ids)["params"])
