"""flaxbert.launch: the huge-page malloc tunable is added once, kept with others, and can be refused."""
import os
import platform
import subprocess
import sys

import pytest

from flaxbert import launch

GLIBC_LINUX = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc on Linux only")
def test_hugepage_env_adds_the_tunable_once_and_keeps_others(monkeypatch):
  monkeypatch.setattr(launch, "_thp_never", lambda: False)
  env = launch.hugepage_env({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + launch.TUNABLE and env["PATH"] == "/bin"
  assert launch.hugepage_env(env) is None  # already set: no second re-exec
  assert launch.hugepage_env({})["GLIBC_TUNABLES"] == launch.TUNABLE
  assert launch.hugepage_env({launch.OPT_OUT: "0"}) is None
  plain = launch.plain_env(env)
  assert plain["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2" and launch.hugepage_env(plain) is None
  assert "GLIBC_TUNABLES" not in launch.plain_env({"GLIBC_TUNABLES": launch.TUNABLE})
  monkeypatch.setattr(launch, "_thp_never", lambda: True)
  assert launch.hugepage_env({}) is None  # the kernel's huge pages are off: nothing to ask for


def _run(env: dict) -> str:
  code = ("import os; from flaxbert.launch import reexec_with_hugepages; reexec_with_hugepages(); "
          "print(os.environ.get('GLIBC_TUNABLES', ''))")
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        check=True).stdout.strip()


@pytest.mark.skipif(not GLIBC_LINUX or launch._thp_never(), reason="glibc on Linux with huge pages")
def test_reexec_runs_the_same_program_with_the_tunable():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", launch.OPT_OUT)}
  assert _run(env) == launch.TUNABLE
  assert _run({**env, launch.OPT_OUT: "0"}) == ""
