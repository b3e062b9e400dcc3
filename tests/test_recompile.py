"""The jitted pretraining step traces and compiles once: new data every step must not retrace it."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import pretrain as pretrain_config
from flaxbert.models.config import BertConfig
from flaxbert.models.pretraining import BertForPreTraining
from flaxbert.pretrain.job import pretraining_step
from flaxbert.training import optim, sharding
from flaxbert.training.state import create_train_state

BATCH, SEQ, PREDICTIONS = 8, 16, 3


def fake_batch(vocab: int, seed: int) -> dict[str, np.ndarray]:
  """Random ids, rows padded to different lengths, masked positions inside each row."""
  rng = np.random.RandomState(seed)
  lengths = rng.randint(PREDICTIONS + 3, SEQ + 1, BATCH)
  mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
  positions = np.stack([np.sort(rng.choice(np.arange(1, n - 1), PREDICTIONS, replace=False)) for n in lengths])
  weights = np.ones((BATCH, PREDICTIONS), np.float32)
  weights[0, -1] = 0.0  # a padded prediction slot
  return {"input_ids": (rng.randint(5, vocab, (BATCH, SEQ)) * mask).astype(np.int32),
          "input_mask": mask,
          "segment_ids": ((np.arange(SEQ)[None] >= lengths[:, None] // 2) * mask).astype(np.int32),
          "masked_lm_positions": positions.astype(np.int32),
          "masked_lm_ids": rng.randint(5, vocab, (BATCH, PREDICTIONS)).astype(np.int32),
          "masked_lm_weights": weights,
          "next_sentence_labels": rng.randint(0, 2, BATCH).astype(np.int32)}


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_train_step_traces_once(accum_steps):
  assert jax.device_count() == 8, "conftest sets --xla_force_host_platform_device_count=8"
  cfg = BertConfig.from_size("tiny", vocab_size=101, max_position_embeddings=SEQ)
  model = BertForPreTraining(cfg)
  opt = pretrain_config.get_config("tiny").optim
  opt.warmup_steps = 2
  opt = optim.resolve(opt, 10)
  tx, schedule = optim.build_optimizer(opt), optim.learning_rate_schedule(opt)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)))
  state, shardings = create_train_state(model, tx, mesh, sharding.DATA_PARALLEL, 0,
                                        (jax.ShapeDtypeStruct((1, SEQ), jnp.int32),))
  step_fn, traces = pretraining_step(model, tx, schedule, accum_steps, nsp=True), []

  def counted(state, batch):
    traces.append(1)  # runs only while jax traces the function
    return step_fn(state, batch)

  train_step = jax.jit(counted, donate_argnums=0, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                       out_shardings=(shardings, NamedSharding(mesh, P())))
  losses = []
  for seed in range(4):
    state, metrics = train_step(state, sharding.global_batch(fake_batch(cfg.vocab_size, seed), mesh))
    losses.append(float(metrics["loss"]))
  assert len(traces) == 1, f"the train step was traced {len(traces)} times over 4 steps"
  if hasattr(train_step, "_cache_size"):
    assert train_step._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 4
  assert np.all(np.isfinite(losses)) and len(set(losses)) == 4  # the data did change
