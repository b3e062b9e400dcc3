"""What agreeing on a stop signal across processes costs per training step.

  .venv/bin/python bench/stop_agreement.py [--size tiny] [--batch 16] [--steps 30] [--rounds 3]
      [--out bench/results/stop_agreement.json]

Starts 2 processes × 4 CPU devices joined by jax.distributed (gloo collectives), as
tests/test_multiprocess.py does. Each times the pretraining train step of BERT-SIZE over the
8-device mesh (global batch --batch, seq 128) for --steps steps, alternately without and with
flaxbert.training.loop.StopAgreement called after every step as the loop calls it (rounds
alternate so drift hits both sides alike); process 0 writes the medians and their ratio.
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(args) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from configs import pretrain as pretrain_config  # pylint: disable=import-outside-toplevel
  from flaxbert.models.config import BertConfig  # pylint: disable=import-outside-toplevel
  from flaxbert.models.pretraining import BertForPreTraining  # pylint: disable=import-outside-toplevel
  from flaxbert.pretrain.job import jit_pretraining_step  # pylint: disable=import-outside-toplevel
  from flaxbert.training import loop, optim, sharding  # pylint: disable=import-outside-toplevel
  from flaxbert.training.state import create_train_state  # pylint: disable=import-outside-toplevel
  from train_step import synthetic_batch  # pylint: disable=import-outside-toplevel
  sharding.initialize_distributed()
  cfg = BertConfig.from_size(args.size)
  model = BertForPreTraining(cfg)
  opt = optim.resolve(pretrain_config.get_config(args.size).optim, 1000)
  opt.warmup_steps = 10
  tx, schedule = optim.build_optimizer(opt), optim.learning_rate_schedule(opt)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)))
  state, shardings = create_train_state(model, tx, mesh, sharding.DATA_PARALLEL, 0,
                                        (jax.ShapeDtypeStruct((1, 128), jnp.int32),))
  step = jit_pretraining_step(model, tx, schedule, 1, True, shardings, mesh)
  local = synthetic_batch(args.batch // jax.process_count(), 128, cfg.vocab_size, 20, seed=jax.process_index())
  batch = sharding.global_batch(local, mesh)
  agree = loop.StopAgreement()
  state, m = step(state, batch)  # compile
  agree(None)
  jax.block_until_ready(m["loss"])
  times = {"without": [], "with": []}
  for _ in range(args.rounds):
    for side in ("without", "with"):
      start = time.perf_counter()
      for _ in range(args.steps):
        state, m = step(state, batch)
        if side == "with":
          assert agree(None) is None
      jax.block_until_ready(m["loss"])
      times[side].append((time.perf_counter() - start) / args.steps)
  if jax.process_index() == 0:
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"date": datetime.date.today().isoformat(), "processes": jax.process_count(),
              "devices": jax.device_count(), "size": args.size, "global_batch": args.batch, "seq": 128,
              "step_s_without": med["without"], "step_s_with": med["with"],
              "overhead": med["with"] / med["without"] - 1, "runs": times,
              "command": f"bench/stop_agreement.py --size {args.size} --batch {args.batch} --steps {args.steps} "
                         f"--rounds {args.rounds}"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="tiny")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default="bench/results/stop_agreement.json")
  args = parser.parse_args()
  if "JAX_PROCESS_ID" in os.environ:
    child(args)
    return
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, *sys.argv], env=dict(
      os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
      JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
      JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))) for i in range(2)]
  if any(p.wait() for p in procs):
    sys.exit("a process failed")


if __name__ == "__main__":
  main()
