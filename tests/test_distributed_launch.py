"""How a launch's environment becomes jax.distributed.initialize's arguments (no processes started)."""
import jax
import pytest

from flaxbert.errors import InputError
from flaxbert.training import sharding

EXPLICIT = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}


@pytest.mark.parametrize("environ, expected", [
    (EXPLICIT, {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "2"}, {}),  # jax reads Slurm's variables itself
    ({"SLURM_NTASKS": "1"}, None),  # a one-task Slurm job is one process
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, {}),  # Cloud TPU VMs: jax's own detection
    ({"OMPI_COMM_WORLD_SIZE": "2"}, {}),
    ({}, None),
])
def test_launch_environments(environ, expected):
  assert sharding.distributed_arguments(environ) == expected


@pytest.mark.parametrize("environ, message", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, r"^JAX_NUM_PROCESSES, JAX_PROCESS_ID: required with JAX_COORDINATOR_ADDRESS"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, r"^JAX_COORDINATOR_ADDRESS: required with"),
    ({**EXPLICIT, "JAX_PROCESS_ID": "4"}, r"^JAX_PROCESS_ID=4: expected 0 ≤ id < JAX_NUM_PROCESSES=4$"),
    ({**EXPLICIT, "JAX_NUM_PROCESSES": "two"}, r"expected integers"),
    ({**EXPLICIT, "JAX_COORDINATOR_ADDRESS": "10.0.0.1"}, r"expected host:port"),
])
def test_bad_launches_are_one_line_errors(environ, message):
  with pytest.raises(InputError, match=message):
    sharding.distributed_arguments(environ)


def test_initialize_passes_the_explicit_launch_and_distributed_false_stays_alone(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  for k, v in EXPLICIT.items():
    monkeypatch.setenv(k, v)
  sharding.initialize_distributed(False)
  assert calls == []
  sharding.initialize_distributed(True)
  assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}]
  with pytest.raises(InputError, match="distributed: expected true or false"):
    sharding.initialize_distributed("no")
