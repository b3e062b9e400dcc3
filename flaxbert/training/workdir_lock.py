"""One writer per workdir: a training run holds WORKDIR/flaxbert.lock while it writes there.

The lock is an exclusive `flock` on that file, which the operating system releases when the
holding process ends however it ends (kill -9 included), so a lock left by a dead run is never in
the way: the next run takes it over and says whose it was. A run that ends removes the file. The file itself records the holder
(host, PID, start time) for the one-line error a second run gets:

    WORKDIR: another run is writing here (host h1, pid 4242, since 2026-12-04T10:31:07Z); …

Only process 0 of a multi-process run takes it (the other processes are the same run). Readers
(`convert`, `evaluate`, `predict`, `from_pretrained`) take no lock. flock needs a filesystem
that implements it (local disks, NFSv4 and Lustre do); where it is not implemented the lock
degrades to the recorded holder alone, and a warning says so.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

import jax

from flaxbert.atomic import process_alive
from flaxbert import storage
from flaxbert.errors import InputError

log = logging.getLogger("flaxbert")
LOCK_FILE = "flaxbert.lock"


def _holder(path: Path) -> dict:
  try:
    value = json.loads(path.read_text(encoding="utf-8") or "{}")
  except (OSError, ValueError):
    return {}
  return value if isinstance(value, dict) else {}


def _describe(holder: dict) -> str:
  if not holder:
    return "holder not recorded"
  return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"


@contextlib.contextmanager
def hold(workdir: str | Path) -> Iterator[None]:
  """Holds WORKDIR's lock for the block (creating WORKDIR); InputError naming the holder when
  another live run holds it, or when WORKDIR cannot be written at all."""
  if jax.process_index() != 0:
    yield
    return
  if storage.is_remote(workdir):
    log.warning("%s: an object store has no file locks; make sure no other run writes to this workdir", workdir)
    yield
    return
  workdir = Path(workdir)
  path = workdir / LOCK_FILE
  fd, flocked = _open_locked(workdir, path)
  try:
    previous = _holder(path)
    pid = previous.get("pid") if isinstance(previous.get("pid"), int) else None
    if not flocked and previous.get("host") == socket.gethostname() and pid not in (None, os.getpid()) \
        and process_alive(pid):  # without flock, the recorded holder is all there is to go by
      raise InputError(f"{workdir}: another run is writing here ({_describe(previous)}); wait for it to end, "
                       "or use another workdir")
    if previous and pid != os.getpid():
      log.warning("%s: took over the lock of a run that has ended (%s)", path, _describe(previous))
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    yield
  finally:
    if flocked or _holder(path).get("pid") == os.getpid():
      path.unlink(missing_ok=True)  # released: removed while still locked, so no one holds a stale inode
    os.close(fd)


def _open_locked(workdir: Path, path: Path) -> tuple[int, bool]:
  """(descriptor, flocked) of the lock file, flocked if the filesystem can; the file may be
  removed by its previous holder between our open and our flock, so the lock counts only when
  the path still names the inode we locked."""
  while True:
    try:
      workdir.mkdir(parents=True, exist_ok=True)
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise InputError(f"{workdir}: cannot be written ({e.strerror or e}); a training workdir must be "
                       "writable") from None
    try:
      flocked = _lock(fd, path)
      if not flocked or os.fstat(fd).st_ino == os.stat(path).st_ino:
        return fd, flocked
    except FileNotFoundError:
      pass
    except BaseException:
      os.close(fd)
      raise
    os.close(fd)


def _lock(fd: int, path: Path) -> bool:
  """True when the flock is held; InputError when another process holds it; False (with a
  warning) where the filesystem does not implement flock."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise InputError(f"{path.parent}: another run is writing here ({_describe(_holder(path))}); wait for it "
                       "to end, or use another workdir") from None
    log.warning("%s: this filesystem does not lock files (%s); only the recorded holder guards the workdir",
                path, e.strerror or e)
    return False
