"""Mesh construction, rule validation, and where FSDP / tensor-parallel rules put the train state."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from configs import pretrain as pretrain_config
from flaxbert.errors import InputError
from flaxbert.models.config import BertConfig
from flaxbert.models.pretraining import BertForPreTraining
from flaxbert.training import optim, sharding
from flaxbert.training.state import create_train_state


def mesh_config(data=-1, fsdp=1, model=1):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, model=model))


def test_make_mesh():
  assert dict(sharding.make_mesh(mesh_config()).shape) == {"data": 8, "fsdp": 1, "model": 1}
  assert dict(sharding.make_mesh(mesh_config(fsdp=4)).shape) == {"data": 2, "fsdp": 4, "model": 1}
  assert dict(sharding.make_mesh(mesh_config(), jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1, "model": 1}
  with pytest.raises(InputError, match="needs 12 devices, there are 8"):
    sharding.make_mesh(mesh_config(data=3, fsdp=4))
  with pytest.raises(InputError, match="at most one axis may be -1"):
    sharding.make_mesh(mesh_config(data=-1, fsdp=-1))
  with pytest.raises(InputError, match="do not divide"):
    sharding.make_mesh(mesh_config(fsdp=3))


def test_rules_are_validated():
  assert sharding.rules_from_config([("batch", ["data", "fsdp"])]) == (("batch", ("data", "fsdp")),)
  with pytest.raises(InputError, match="unknown mesh axis 'tensor'"):
    sharding.rules_from_config([("heads", "tensor")])


@pytest.mark.parametrize("rules,mesh,word,query,mu_query", [
    (sharding.FSDP, mesh_config(data=2, fsdp=4), P(None, "fsdp"), P("fsdp", None, None), P("fsdp", None, None)),
    (sharding.TENSOR_PARALLEL, mesh_config(data=4, model=2), P("model", None), P(None, "model", None),
     P(None, "model", None)),
    (sharding.DATA_PARALLEL, mesh_config(), P(None, None), P(None, None, None), P(None, None, None)),
])
def test_state_is_placed_by_the_rules(rules, mesh, word, query, mu_query):
  model = BertForPreTraining(BertConfig.from_size("tiny", vocab_size=64, max_position_embeddings=32))
  opt = pretrain_config.get_config("tiny").optim
  opt.warmup_steps = 1
  tx = optim.build_optimizer(optim.resolve(opt, 10))
  state, shardings = create_train_state(model, tx, sharding.make_mesh(mesh), rules, 0,
                                        (jax.ShapeDtypeStruct((1, 16), jnp.int32),))
  params = state.params
  assert params["bert"]["embeddings"]["word_embeddings"]["embedding"].sharding.spec == word
  assert params["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"].sharding.spec == query
  mu = jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
  adam = next(s for s in mu if hasattr(s, "mu"))
  assert adam.mu["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"].sharding.spec == mu_query
  assert shardings.step.spec == P()
