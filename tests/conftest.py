"""Shared fixtures: 8 simulated CPU devices, tiny configs, random weights, a padded sentence-pair batch."""
import atexit
import logging
import os
import shutil
import tempfile

# Must precede the first `import jax` anywhere in the test session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA compilation cache for the session (subprocesses inherit it): the many runs
# that compile the same tiny train step compile it once. Fresh per session, removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="flaxbert-test-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from flaxbert.models.config import BertConfig  # noqa: E402
from flaxbert.models.pretraining import build_model  # noqa: E402

logging.getLogger("absl").setLevel(logging.WARNING)


def random_params(model, seed: int = 0, noise: float = 0.05) -> dict:
  """The model's initial params plus noise, so that biases and LayerNorms are not trivially 0/1."""
  variables = model.init(jax.random.key(seed), np.zeros((1, 4), np.int32))
  params = nn.unbox(variables["params"])
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.RandomState(seed)
  leaves = [np.asarray(x) + (noise * rng.standard_normal(x.shape)).astype(x.dtype) for x in leaves]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def make_batch(config: BertConfig, batch: int = 3, length: int = 16, seed: int = 0) -> dict:
  """[CLS] A [SEP] B [SEP] pairs with padding: rows have different lengths, segment ids 0 and 1."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(5, config.vocab_size, size=(batch, length)).astype(np.int32)
  mask = np.zeros((batch, length), np.int32)
  types = np.zeros((batch, length), np.int32)
  for b in range(batch):
    n = length - 5 * b if length - 5 * b > 4 else length
    mask[b, :n] = 1
    types[b, n // 2:n] = 1
    ids[b, n:] = 0
  return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@pytest.fixture
def tiny_config() -> BertConfig:
  return BertConfig.from_size("tiny", vocab_size=211, max_position_embeddings=64)


@pytest.fixture
def tiny_model(tiny_config):
  return build_model(tiny_config)


@pytest.fixture
def tiny_params(tiny_model):
  return random_params(tiny_model)
