"""Directories that appear only when complete: build in a hidden sibling, then rename.

The hidden siblings of a folder D carry the writing process's id, so that what a killed process
left behind can be told from what a running one is still writing:
  .D.partial-PID-XXXX   the new content while it is built (and, at the end, the replaced copy
                        while it is deleted); one of a dead process is removed by the next run
  .D.old-PID            the previous D during the two renames of a swap: the only copy of D
                        while D is missing; a dead process's one is put back (or, when a
                        complete D is already in place, removed) by `recover`
`recover(D)` runs before every atomic_directory on D, and its first half (the swap) whenever a
dataset is opened (data_prep.format.open_dataset), so a kill at any point leaves D readable as
the old or the new folder, whole, once either looks.

An object store (gs://, …; flaxbert.storage) has no folder rename: there the content is built in
a local temporary folder and uploaded with the files that mark it complete last (`complete`), and
a non-empty remote folder is never replaced; a single file is uploaded whole (an object appears
only once complete).
"""
import contextlib
import errno
import functools
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

from flaxbert import storage
from flaxbert.errors import InputError

log = logging.getLogger("flaxbert")


def check_destination(directory: str | os.PathLike, overwrite: bool, inputs: Sequence = (),
                      replaceable: Callable[[Path], bool] | None = None, kind: str = "") -> None:
  """Refuses an output folder that would lose something: one that holds (or is) an input, a
  non-empty one without `overwrite`, and with it one that `replaceable` says is not a `kind`
  (an object store's folder: any non-empty one, since it cannot be replaced atomically)."""
  directory = storage.path(directory)
  if directory.exists() and not directory.is_dir():
    raise InputError(f"{directory}: exists and is not a directory")
  for path in inputs:
    if path and within(path, directory):
      raise InputError(f"{directory}: holds the input {path}; writing there would delete what is read; "
                       "choose another output folder")
  if directory.is_dir() and any(directory.iterdir()):
    if not overwrite:
      raise InputError(f"{directory}: exists and is not empty; choose a new path or pass overwrite")
    if storage.is_remote(directory):
      raise InputError(f"{directory}: exists and is not empty, and an object store cannot replace a folder "
                       "atomically; remove it yourself (e.g. gcloud storage rm -r) or choose a new path")
    if replaceable is not None and not replaceable(directory):
      raise InputError(f"{directory}: exists and is not a {kind}; overwrite replaces only that, so "
                       "remove it yourself or choose a new path")


def check_output_file(path: str | os.PathLike, overwrite: bool, inputs: Sequence = ()) -> None:
  """Refuses an output file that is one of the inputs, a folder, or (without overwrite) exists."""
  path = storage.path(path)
  for source in inputs:
    if source and storage.absolute(path) == storage.absolute(source):
      raise InputError(f"{path}: is also the input; choose another output file")
  if path.is_dir():
    raise InputError(f"{path}: is a folder; expected the path of a file to write")
  if path.exists() and not overwrite:
    raise InputError(f"{path}: exists; pass --overwrite to replace it (only once the new one is complete)")


def within(path, directory) -> bool:
  """Whether `path` is `directory` or inside it (both resolved; URIs compared as written)."""
  if storage.is_remote(path) or storage.is_remote(directory):
    inner, outer = os.fspath(path).rstrip("/"), os.fspath(directory).rstrip("/")
    return inner == outer or inner.startswith(outer + "/")
  path, directory = Path(path).resolve(), Path(directory).resolve()
  return path == directory or directory in path.parents


def process_alive(pid: int) -> bool:
  """Whether process `pid` runs on this machine (a process of another user counts as running)."""
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  except (OverflowError, ValueError):
    return False
  return True


def _leftovers(directory: Path, kind: str) -> list[tuple[Path, int]]:
  """(path, pid) of the hidden `.NAME.{kind}-PID…` siblings of `directory` whose process is dead,
  newest first; a name without a pid (an older version's) is never touched."""
  pattern = re.compile(re.escape(f".{directory.name}.{kind}-") + r"(\d+)(?:-|$)")
  found = []
  with contextlib.suppress(OSError):
    for path in directory.parent.iterdir():
      match = pattern.match(path.name)
      if match and (path.is_dir() or path.is_file()) and not path.is_symlink() \
          and not process_alive(int(match.group(1))):
        found.append((path, path.stat().st_mtime))
  return [(p, int(pattern.match(p.name).group(1))) for p, _ in sorted(found, key=lambda x: -x[1])]


def recover(directory: str | os.PathLike, partials: bool = True) -> None:
  """Finishes what a killed `atomic_directory` left beside `directory`: puts back the previous
  folder a kill between the swap's renames left hidden (or removes it when the new one is in
  place), and (`partials`) removes the dead processes' temporary folders. Folders of running
  processes are never touched. (Process ids are this machine's: on a file system shared between
  machines, only readers' `partials=False` is safe while another machine writes.) Object stores
  have no hidden siblings: nothing to do there."""
  if storage.is_remote(directory):
    return
  directory = Path(directory)
  for old, pid in _leftovers(directory, "old"):
    try:
      if not directory.exists() and not directory.is_symlink():
        old.rename(directory)
        log.warning("%s: restored from %s, which a process (%d) killed while replacing it left hidden",
                    directory, old.name, pid)
      else:
        shutil.rmtree(old)
        log.warning("%s: removed %s, the copy it replaced, left by a killed process (%d)", directory, old.name, pid)
    except OSError as e:  # another process got there first, or the folder is not writable
      log.warning("%s: could not clean up %s (%s)", directory, old.name, e)
  for partial, pid in _leftovers(directory, "partial") if partials else ():
    if partial.is_dir():
      shutil.rmtree(partial, ignore_errors=True)
    else:
      partial.unlink(missing_ok=True)
    log.warning("%s: removed %s, the unfinished output of a killed process (%d)", directory, partial.name, pid)


# OS errors that mean "this place cannot be written" (as opposed to a bad input).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


def _write_error(e: OSError, directory: Path, tmp: Path | None) -> InputError | None:
  """The one-line error for an OSError that says `directory` cannot be written (None for others:
  an unreadable input, say, is reported where it is read)."""
  if e.errno not in _WRITE_ERRNOS:
    return None
  name = Path(e.filename) if isinstance(e.filename, (str, os.PathLike)) else None
  if name is not None and e.errno in (errno.EACCES, errno.EPERM):  # a write of ours, or a read?
    ours = (within(directory, name) or name.name.startswith(f".{directory.name}.")
            or (tmp is not None and within(name, tmp)))
    if not ours:
      return None
  where = f" ({name})" if name is not None and name != directory else ""
  return InputError(f"{directory}: cannot write the output: {e.strerror or e}{where} "
                    f"[{errno.errorcode.get(e.errno, e.errno)}]; the partial output was removed and "
                    f"{directory} left as it was")


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, overwrite: bool, inputs: Sequence = (),
                     replaceable: Callable[[Path], bool] | None = None, kind: str = "",
                     complete: Sequence[str] = ()) -> Iterator[Path]:
  """Yields a fresh temporary sibling folder that becomes `directory` only if the block succeeds.

  A failure (or an interruption) removes the temporary folder and leaves `directory` as it was;
  a kill at any point is finished by the next call (`recover`), so `directory` is then the old
  folder or the new one, whole. An existing non-empty `directory` is an error unless
  `overwrite`, in which case it is replaced only after the new content is complete;
  `check_destination` says what else is refused. An OSError that says the place cannot be
  written (read-only, full, no permission) becomes an InputError naming `directory`.
  An object store's `directory` is uploaded from the local temporary folder, the top-level files
  named in `complete` (what readers take as the sign of a complete folder) last; a failed upload
  removes what it wrote.
  """
  if storage.is_remote(directory):
    with _remote_directory(storage.path(directory), overwrite, inputs, replaceable, kind, complete) as tmp:
      yield tmp
    return
  directory = Path(directory)
  recover(directory)
  check_destination(directory, overwrite, inputs, replaceable, kind)
  tmp = None
  try:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-{os.getpid()}-", dir=directory.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp's 0700 → a new folder's usual mode
    yield tmp
    _swap(tmp, directory)
  except OSError as e:
    error = _write_error(e, directory, tmp)
    if error is None:
      raise
    raise error from None
  finally:
    if tmp is not None and tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _remote_directory(directory, overwrite, inputs, replaceable, kind, complete) -> Iterator[Path]:
  check_destination(directory, overwrite, inputs, replaceable, kind)
  tmp = Path(tempfile.mkdtemp(prefix=f"flaxbert-{directory.name}-"))
  try:
    yield tmp
    try:
      storage.upload_tree(tmp, directory, last=complete)
    except BaseException:
      storage.remove_tree(directory)
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _swap(tmp: Path, directory: Path) -> None:
  """`tmp` becomes `directory`; a previous `directory` is kept as `.NAME.old-PID` only between
  the two renames (a failed second rename puts it back), then becomes `tmp` to be deleted."""
  old = None
  if directory.exists():
    old = directory.parent / f".{directory.name}.old-{os.getpid()}"
    directory.rename(old)
  try:
    tmp.rename(directory)
  except BaseException:
    if old is not None:
      old.rename(directory)
    raise
  if old is not None:
    old.rename(tmp)  # the caller deletes it; a kill while it does leaves a dead process's partial


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary sibling path that replaces `path` (os.replace) only if the block succeeds
  (an object store's `path`: a local temporary file, uploaded whole)."""
  if storage.is_remote(path):
    with tempfile.TemporaryDirectory(prefix="flaxbert-") as folder:
      tmp = Path(folder) / storage.path(path).name
      yield tmp
      storage.upload_tree(Path(folder), storage.path(path).parent)
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  for partial, _ in _leftovers(path, "partial"):  # a killed writer's temporary file
    partial.unlink(missing_ok=True)
  fd, name = tempfile.mkstemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=path.parent)
  try:  # mkstemp's 0600 → the mode the file has, or a new file's (0666 less the umask)
    os.fchmod(fd, path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~umask())
  finally:
    os.close(fd)
  tmp = Path(name)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


@functools.cache
def umask() -> int:
  """The process's umask (read once: reading it means setting it)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  """Writes `data` to `path` atomically: a reader (or a rerun after a kill) sees the old file or
  the whole new one, never a partial one."""
  path = storage.path(path)
  with atomic_file(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  return path


def write_text(path: str | os.PathLike, text: str) -> Path:
  """`text` as UTF-8, written atomically (write_bytes)."""
  return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value, **dumps_kwargs) -> Path:
  """`value` as indented JSON (one trailing newline), written atomically (write_text)."""
  import json  # pylint: disable=import-outside-toplevel
  return write_text(path, json.dumps(value, indent=2, **dumps_kwargs) + "\n")
