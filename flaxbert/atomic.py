"""Directories that appear only when complete: build in a hidden sibling, then rename."""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

from flaxbert.errors import InputError


def check_destination(directory: str | os.PathLike, overwrite: bool, inputs: Sequence = (),
                      replaceable: Callable[[Path], bool] | None = None, kind: str = "") -> None:
  """Refuses an output folder that would lose something: one that holds (or is) an input, a
  non-empty one without `overwrite`, and with it one that `replaceable` says is not a `kind`."""
  directory = Path(directory)
  if directory.exists() and not directory.is_dir():
    raise InputError(f"{directory}: exists and is not a directory")
  for path in inputs:
    if path and _within(Path(path), directory):
      raise InputError(f"{directory}: holds the input {path}; writing there would delete what is read; "
                       "choose another output folder")
  if directory.is_dir() and any(directory.iterdir()):
    if not overwrite:
      raise InputError(f"{directory}: exists and is not empty; choose a new path or pass overwrite")
    if replaceable is not None and not replaceable(directory):
      raise InputError(f"{directory}: exists and is not a {kind}; overwrite replaces only that, so "
                       "remove it yourself or choose a new path")


def check_output_file(path: str | os.PathLike, overwrite: bool, inputs: Sequence = ()) -> None:
  """Refuses an output file that is one of the inputs, a folder, or (without overwrite) exists."""
  path = Path(path)
  for source in inputs:
    if source and path.resolve() == Path(source).resolve():
      raise InputError(f"{path}: is also the input; choose another output file")
  if path.is_dir():
    raise InputError(f"{path}: is a folder; expected the path of a file to write")
  if path.exists() and not overwrite:
    raise InputError(f"{path}: exists; pass --overwrite to replace it (only once the new one is complete)")


def _within(path: Path, directory: Path) -> bool:
  path, directory = path.resolve(), directory.resolve()
  return path == directory or directory in path.parents


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, overwrite: bool, inputs: Sequence = (),
                     replaceable: Callable[[Path], bool] | None = None, kind: str = "") -> Iterator[Path]:
  """Yields a fresh temporary sibling folder that becomes `directory` only if the block succeeds.

  A failure (or an interruption) removes the temporary folder and leaves `directory` as it was.
  An existing non-empty `directory` is an error unless `overwrite`, in which case it is replaced
  only after the new content is complete; `check_destination` says what else is refused.
  """
  directory = Path(directory)
  check_destination(directory, overwrite, inputs, replaceable, kind)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
  try:
    yield tmp
    old = None
    if directory.exists():
      old = directory.parent / f".{directory.name}.old-{os.getpid()}"
      directory.rename(old)
    tmp.rename(directory)
    if old is not None:
      shutil.rmtree(old)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary sibling path that replaces `path` (os.replace) only if the block succeeds."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
  os.close(fd)
  tmp = Path(name)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
