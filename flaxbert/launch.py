"""How flaxbert's commands start their process: glibc's malloc asked for transparent huge pages.

XLA's CPU runtime takes each step's buffers (over a gigabyte of temporaries for BERT-small at batch
32) from glibc's malloc, which maps large blocks afresh and unmaps them when freed: every step then
faults its working set back in, 4 KiB at a time (1.8M page faults in a profile of 8 small steps).
glibc ≥ 2.35 can advise the kernel to back such blocks with 2 MiB pages (the tunable
`glibc.malloc.hugetlb=1`; the kernel's transparent_hugepage setting must be `madvise` or `always`):
a tenth of the faults, and BERT-small's CPU step took 2721 ms instead of 2963 (bench/profile_step.py,
one run each; docs/performance.md). glibc reads tunables only when a process starts, so the
`flaxbert` command, `python -m flaxbert.demo` and the benchmarks re-execute themselves once with it
set, before importing jax.

FLAXBERT_MALLOC_HUGEPAGES=0 in the environment turns this off; a library user sets GLIBC_TUNABLES
in their own launcher.
"""
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "FLAXBERT_MALLOC_HUGEPAGES"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _tunables(env: dict) -> list[str]:
  return [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]


def hugepage_env(env: dict) -> dict | None:
  """`env` with TUNABLE added to GLIBC_TUNABLES (other tunables kept), or None where nothing is to
  change: already set, opted out, not glibc on Linux, or the kernel's huge pages switched off."""
  tunables = _tunables(env)
  if TUNABLE in tunables or env.get(OPT_OUT) == "0":
    return None
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or _thp_never():
    return None
  return {**env, "GLIBC_TUNABLES": ":".join(tunables + [TUNABLE])}


def plain_env(env: dict) -> dict:
  """`env` without TUNABLE and opted out, for a child process that is to run as programs run by
  default (bench/torch_side.py: the PyTorch peer)."""
  tunables = [t for t in _tunables(env) if t != TUNABLE]
  plain = {k: v for k, v in env.items() if k != "GLIBC_TUNABLES"}
  if tunables:
    plain["GLIBC_TUNABLES"] = ":".join(tunables)
  return {**plain, OPT_OUT: "0"}


def _thp_never() -> bool:
  try:
    with open(_THP_SETTING) as f:
      return "[never]" in f.read()
  except OSError:
    return False


def reexec_with_hugepages() -> None:
  """Replace this process by itself (same interpreter, options and arguments) with TUNABLE in its
  environment, unless `hugepage_env` says there is nothing to change. Call it first thing in a
  program's entry point: whatever ran before is run again."""
  env = hugepage_env(dict(os.environ))
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def main() -> int:
  """The `flaxbert` console command: flaxbert.cli.main in a process with huge-page malloc."""
  reexec_with_hugepages()
  from flaxbert import cli  # pylint: disable=import-outside-toplevel
  return cli.main()
