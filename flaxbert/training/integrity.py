"""Checkpoint integrity: a digest of every file of a step, written once the step is complete and
verified before it is restored.

Orbax makes a step appear only when all its files are written, but nothing in the files says
they are still what was written: a flipped bit in a parameter array restores as a wrong value
with no error. Once a step is complete (`seal`), WORKDIR/checkpoints/N/flaxbert_digest.json
records the size and SHA-256 of each of its files; `verify` recomputes them for the items about
to be restored (params, train, meta) and names the first file that differs. A step that fails is
skipped like an unreadable one; a training run moves it aside (`move_aside`, to
WORKDIR/checkpoints-corrupt/N-TIME, never deleted) so that it can write that step again. A step
saved by an older flaxbert, or cut off between Orbax's commit and the digest, has no digest; it
restores unverified, as before. The cost is one read of the restored files (bench/checkpoint_integrity.py).
"""
import concurrent.futures
import datetime
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable

from flaxbert import atomic, storage

log = logging.getLogger("flaxbert")
DIGEST_FILE = "flaxbert_digest.json"
CORRUPT = "checkpoints-corrupt"
_VERSION = 1


def _sha256(path: Path) -> str:
  with path.open("rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _digests(paths: list[Path]) -> list[str]:
  """SHA-256 of each file, hashed on a few threads (hashlib releases the GIL)."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    return list(pool.map(_sha256, paths))


def _files(step_dir) -> list[tuple[str, Path]]:
  return [(name, path) for name, path in storage.files(step_dir) if name != DIGEST_FILE]


def seal(step_dir: str | Path) -> bool:
  """Writes the step's digest (once); False when the step is gone (rotated away meanwhile)."""
  step_dir = storage.path(step_dir)
  if (step_dir / DIGEST_FILE).is_file():
    return True
  try:
    found = _files(step_dir)
    files = {name: {"bytes": storage.size(p), "sha256": h}
             for (name, p), h in zip(found, _digests([p for _, p in found]))}
    if not step_dir.is_dir():
      return False
    atomic.write_json(step_dir / DIGEST_FILE, {"version": _VERSION, "files": files}, sort_keys=True)
  except FileNotFoundError:
    return False
  return True


def verify(step_dir: str | Path, items: Iterable[str]) -> str | None:
  """None when the files of `items` (top-level folders of the step) are as sealed, or when the
  step has no digest; else what differs, naming the file."""
  step_dir = storage.path(step_dir)
  try:
    recorded = json.loads((step_dir / DIGEST_FILE).read_text(encoding="utf-8"))
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    return f"{DIGEST_FILE} unreadable ({e})"
  files = recorded.get("files") if isinstance(recorded, dict) else None
  if not isinstance(files, dict):
    return f"{DIGEST_FILE} holds no file list"
  wanted = sorted((name, want) for name, want in files.items() if name.split("/")[0] in set(items))
  for name, want in wanted:  # sizes first: a truncated or missing file costs no read
    try:
      size = storage.size(step_dir / name)
    except OSError as e:
      return f"{name}: {'missing' if isinstance(e, FileNotFoundError) else f'unreadable ({e.strerror or e})'}"
    if size != want["bytes"]:
      return f"{name}: {size} bytes, {want['bytes']} written"
  try:
    digests = _digests([step_dir / name for name, _ in wanted])
  except OSError as e:
    return f"{e.filename}: unreadable ({e.strerror or e})"
  for (name, want), digest in zip(wanted, digests):
    if digest != want["sha256"]:
      return f"{name}: contents differ from what was written (SHA-256 mismatch)"
  return None


def move_aside(step_dir: str | Path) -> Path:
  """Moves a step found corrupt to WORKDIR/checkpoints-corrupt/N-TIME (never deleted)."""
  step_dir = storage.path(step_dir)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
  target = step_dir.parent.parent / CORRUPT / f"{step_dir.name}-{stamp}"
  target.parent.mkdir(parents=True, exist_ok=True)
  step_dir.rename(target)
  log.warning("checkpoint step %s moved aside to %s (kept for inspection; training writes that step again)",
              step_dir.name, target)
  return target
