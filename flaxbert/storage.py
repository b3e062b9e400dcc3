"""Paths on this machine and in object stores (gs://, s3://, … whatever `etils.epath` opens) as one type.

`path(p)` is a `pathlib.Path` for a local path and an `epath.Path` for a URI; both have what
flaxbert uses of a path (`/`, name, parent, exists, is_dir, is_file, iterdir, mkdir, open,
read_text/bytes, write_text/bytes, unlink). Code that takes a user's path calls `path()`, never
`Path()` (which reads "gs://b/x" as the local "gs:/b/x").

What an object store lacks, and what flaxbert does instead:
  folder rename  outputs (prepared datasets, exports) are built in a local temporary folder and
                 uploaded with the files that mark them complete last (`upload_tree`); a non-empty
                 remote folder is never replaced (flaxbert.atomic)
  append         metrics files are kept in a local copy and uploaded whole at every write
                 (`LocalMirror`)
  locks          a remote workdir has no writer lock (flaxbert.training.workdir_lock warns)
An object appears only once its upload is complete, so a single file is written in place.

For gs://, epath reads and writes through `tf.io.gfile` when TensorFlow is installed, through
fsspec (gcsfs) otherwise or with EPATH_USE_TF=false. flaxbert sets EPATH_USE_TF=false when gcsfs is
installed (the `gcs` extra) and the variable is unset: gcsfs is what the tests run against (a local
emulator; TensorFlow's GCS client has a fixed endpoint). Orbax's array writes go through tensorstore
and prepared shards are read by array_record's own GCS client. Credentials are each library's
default (Application Default Credentials on Google Cloud).
"""
import contextlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

if "EPATH_USE_TF" not in os.environ and importlib.util.find_spec("gcsfs") is not None:
  os.environ["EPATH_USE_TF"] = "false"


def is_remote(p) -> bool:
  """Whether `p` names an object store (a URI such as gs://bucket/x), not a path on this machine."""
  if isinstance(p, Path):
    return False
  try:
    return bool(_URI.match(os.fspath(p)))
  except TypeError:
    return False


def path(p: str | os.PathLike):
  """A pathlib.Path for a local path; an epath.Path (same methods) for gs://, s3://, …"""
  if is_remote(p):
    from etils import epath  # pylint: disable=import-outside-toplevel
    return epath.Path(os.fspath(p))
  return Path(p)


def absolute(p: str | os.PathLike):
  """`p` made absolute (local: resolved, symlinks included); a URI is already absolute."""
  return path(p) if is_remote(p) else Path(p).resolve()


def files(root) -> Iterator[tuple[str, object]]:
  """(relative POSIX name, path) of every file under `root`, sorted, subfolders included."""
  root = path(root)
  if not is_remote(root):
    found = [(Path(directory) / name) for directory, _, names in os.walk(root) for name in names]
    yield from sorted(((p.relative_to(root).as_posix(), p) for p in found), key=lambda item: item[0])
    return
  pending = [("", root)]
  found = []
  while pending:
    prefix, folder = pending.pop()
    for child in folder.iterdir():
      rel = prefix + child.name
      if child.is_dir():
        pending.append((rel + "/", child))
      else:
        found.append((rel, child))
  yield from sorted(found, key=lambda item: item[0])


def copy(src, dst) -> None:
  """Copies the file `src` to `dst` (either may be in an object store)."""
  with path(src).open("rb") as f, path(dst).open("wb") as g:
    shutil.copyfileobj(f, g, 8 << 20)


@contextlib.contextmanager
def local_file(p) -> Iterator[Path]:
  """`p` as a file on this machine for the block: itself, or a temporary copy of a remote one
  (for readers that take only local paths: safetensors, PyTorch's zip)."""
  if not is_remote(p):
    yield Path(p)
    return
  with tempfile.TemporaryDirectory(prefix="flaxbert-") as folder:
    local = Path(folder) / path(p).name
    copy(p, local)
    yield local


def size(p) -> int:
  """The size of the file `p` in bytes (FileNotFoundError when it is missing)."""
  p = path(p)
  if not is_remote(p):
    return p.stat().st_size
  if not p.is_file():
    raise FileNotFoundError(2, "No such file", str(p))
  return p.stat().length


def remove_tree(root) -> None:
  """Deletes `root` and everything under it (a missing `root` is fine)."""
  root = path(root)
  if is_remote(root):
    if root.exists():
      root.rmtree()
  else:
    shutil.rmtree(root, ignore_errors=True)


def upload_tree(local: Path, remote, last: Sequence[str] = ()) -> None:
  """Copies the files under `local` to the folder `remote`, the top-level files named in `last`
  (the ones readers take as the sign of a complete folder) after all others."""
  remote = path(remote)
  names = sorted((rel for rel, _ in files(local)), key=lambda rel: (rel in last, last.index(rel) if rel in last else 0))
  for rel in names:
    _copy_file(local / rel, remote / rel)


def _copy_file(src: Path, dst) -> None:
  dst.parent.mkdir(parents=True, exist_ok=True)
  with open(src, "rb") as f, dst.open("wb") as g:
    shutil.copyfileobj(f, g, 8 << 20)


class LocalMirror:
  """A local folder that stands for `directory`, for files written piecewise (appended), which an
  object store cannot do: for a local `directory` it is the folder itself; for an object store it
  is a temporary folder that starts with copies of the files named in `fetch` (those that exist)
  and whose files are all uploaded to `directory` at every `sync()`."""

  def __init__(self, directory, fetch: Sequence[str] = ()):
    self.directory = path(directory)
    self._tmp = None
    if not is_remote(self.directory):
      self.local = Path(self.directory)
      self.local.mkdir(parents=True, exist_ok=True)
      return
    self._tmp = self.local = Path(tempfile.mkdtemp(prefix="flaxbert-"))
    for name in fetch:
      if (self.directory / name).is_file():
        with (self.directory / name).open("rb") as src, open(self.local / name, "wb") as dst:
          shutil.copyfileobj(src, dst, 8 << 20)

  def sync(self) -> None:
    if self._tmp is not None:
      upload_tree(self._tmp, self.directory)

  def close(self) -> None:
    self.sync()
    if self._tmp is not None:
      shutil.rmtree(self._tmp, ignore_errors=True)
      self._tmp = None
