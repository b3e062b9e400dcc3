"""Hostile data: each case builds one bad input in tmp_path, runs one action on it, and expects
either a one-line InputError whose message matches a pattern (naming the file and what was
expected) or the correct result. One good tiny dataset is prepared once and copied per case."""
import dataclasses
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from corpus_fixtures import sentence
from data_prep import builder as builder_lib
from data_prep.builder import prepare
from data_prep.format import is_prepared
from flaxbert import atomic
from flaxbert.errors import InputError
from flaxbert.finetune.tasks.readers import read_table
from flaxbert.pretrain.input_pipeline import PretrainingData
from test_builder import settings

REPO = Path(__file__).resolve().parents[1]
SHARD = "bert_pretraining-train.array_record-00000-of-"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
  """A dynamic-masking dataset without next-sentence prediction (so that packing reads it too)."""
  out, _ = prepare(settings(tmp_path_factory.mktemp("good"), masking="dynamic", dupe_factor=1,
                            random_next_sentence=False))
  return out


def hidden(folder: Path) -> list[str]:
  """What atomic_directory may leave beside `folder`: .NAME.partial-* / .NAME.old-*."""
  return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def copy_of(good: Path, tmp_path: Path) -> Path:
  return Path(shutil.copytree(good, tmp_path / "data"))


def dead_pid() -> int:
  return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                            capture_output=True, text=True).stdout)


# --- actions ---------------------------------------------------------------------------------------


def read_all(directory: Path, per_row: int = 1) -> int:
  """Reads a whole epoch and the evaluation pass of the train split; the examples read."""
  data = PretrainingData(directory, "train", global_batch_size=4, seed=0, prefetch=0,
                         max_examples_per_row=per_row)
  for step in range(data.steps_per_epoch):
    data.batch(step)
  return sum(int(b["example_mask"].sum()) for b in data.eval_batches())


def read_packed(directory: Path) -> int:
  return read_all(directory, per_row=4)


def prepare_metadata(config) -> dict:
  return prepare(config)[1]


# --- item 1: a kill at each step of `atomic_directory(..., overwrite=True)` -------------------------

# Runs atomic_directory(dst, overwrite=True) with the new content = src plus a file "marker", and
# exits hard (os._exit, as kill -9) at the named step.
KILLER = r"""
import os, pathlib, shutil, sys
from flaxbert.atomic import atomic_directory
src, dst, step = sys.argv[1:]
renames, real_rename = [], pathlib.Path.rename
def rename(self, target):  # the swap's renames, in order: dst -> .old, new -> dst, .old -> to delete
  if len(renames) == {"before_swap": 0, "old_hidden": 1, "new_in_place": 2}.get(step):
    os._exit(9)
  renames.append(target)
  return real_rename(self, target)
def rmtree(path, *args, **kwargs):  # the replaced copy half deleted
  os.remove(next(p for p in sorted(pathlib.Path(path).rglob("*")) if p.is_file()))
  os._exit(9)
pathlib.Path.rename = rename
if step == "deleting_old":
  shutil.rmtree = rmtree
with atomic_directory(dst, overwrite=True) as tmp:
  shutil.copytree(src, tmp, dirs_exist_ok=True)
  if step == "in_block":
    os._exit(9)
  (tmp / "marker").write_text("new")
"""


def killed_swap(step: str):
  def build(tmp_path, good, monkeypatch):
    target = copy_of(good, tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    code = subprocess.run([sys.executable, "-c", KILLER, str(good), str(target), step], env=env).returncode
    assert code == 9
    return target, good
  return build


def read_then_run_again(target_and_good) -> str:
  """A reader sees the old or the new folder whole; the next run completes and leaves nothing."""
  target, good = target_and_good
  read_all(target)
  version = "new" if (target / "marker").exists() else "old"
  for f in good.iterdir():
    assert (target / f.name).read_bytes() == f.read_bytes(), f.name
  assert sorted(p.name for p in target.iterdir()) == sorted([p.name for p in good.iterdir()] +
                                                            (["marker"] if version == "new" else []))
  with atomic.atomic_directory(target, overwrite=True, replaceable=is_prepared) as tmp:
    shutil.copytree(good, tmp, dirs_exist_ok=True)
  assert is_prepared(target) and not (target / "marker").exists() and not hidden(target)
  return version


def is_version(expected: str) -> Callable:
  def check(result, log):
    assert result == expected
  return check


# --- item 2: temporary folders of killed runs ------------------------------------------------------


def stale_partials(tmp_path, good, monkeypatch):
  c = settings(tmp_path)
  dead = tmp_path / f".data.partial-{dead_pid()}-abcd1234"
  live = tmp_path / f".data.partial-{os.getpid()}-efgh5678"  # a running process's: never touched
  for folder in (dead, live):
    (folder / "_build").mkdir(parents=True)
  return c


def partials_cleaned(result, log):
  names = hidden(Path(result["settings"]["output_dir"]))
  assert len(names) == 1 and names[0].startswith(f".data.partial-{os.getpid()}-")
  assert re.search(r"removed \.data\.partial-\d+-abcd1234, the unfinished output of a killed process", log)


# --- item 3: inputs read twice ---------------------------------------------------------------------


def output_inside_input(tmp_path, good, monkeypatch):
  c = settings(tmp_path)
  c.output_dir = str(Path(c.input[0]) / "ds")
  return c


def dataset_inside_input(tmp_path, good, monkeypatch):
  c = settings(tmp_path)
  shutil.copytree(good, Path(c.input[0]) / "earlier_ds")
  return c


def same_file_three_ways(tmp_path, good, monkeypatch):
  c = settings(tmp_path)
  monkeypatch.chdir(tmp_path)
  c.input = ("corpus", "corpus/part-0.txt", "./corpus/part-0.txt")
  return c


def sources_are(files: int, documents: int, **expected) -> Callable:
  def check(result, log):
    s = result["sources"]
    assert (s["files"], s["documents"]) == (files, documents)
    assert {k: s[k] if isinstance(s[k], int) else len(s[k]) for k in expected} == expected
  return check


# --- item 4: odd files in a corpus folder ----------------------------------------------------------


def write_odd_files(folder: Path) -> None:
  """An empty file, a 2-line Latin-1 file (its second line only accented letters), 4 KB of random
  bytes without a NUL."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "a-empty.txt").write_bytes(b"")
  (folder / "b-latin1.txt").write_bytes("caf\xe9 cr\xe8me w1 w2.\n\xe9\xe8\xea\n".encode("latin-1"))
  noise = np.random.RandomState(0).randint(1, 256, 4096, dtype=np.uint8).tobytes()
  (folder / "c-random.bin").write_bytes(noise)


def odd_files_and_one_document(tmp_path, good, monkeypatch):
  c = settings(tmp_path, validation_fraction=0.01)
  folder = tmp_path / "odd"
  write_odd_files(folder)
  rng = np.random.RandomState(0)
  (folder / "d-ordinary.txt").write_text("\n".join(sentence(rng) for _ in range(400)) + "\n")
  c.input = (str(folder),)
  return c


def odd_files_in_a_corpus(tmp_path, good, monkeypatch):
  c = settings(tmp_path)
  write_odd_files(Path(c.input[0]))
  return c


def invisible_text(tmp_path, good, monkeypatch):
  """A file of zero-width spaces, a whole chunk of it: a work unit without a token."""
  c = settings(tmp_path)
  (Path(c.input[0]) / "z-invisible.txt").write_text("\n\n".join("\u200b" * 200 for _ in range(60)) + "\n")
  return c


def odd_files_counted(result, log):
  s = result["sources"]
  assert [Path(p).name for p in s["empty_files"]] == ["a-empty.txt"]
  assert [Path(p).name for p in s["binary_files"]] == ["c-random.bin"]
  assert [Path(p).name for p in s["files_with_bad_utf8"]] == ["b-latin1.txt"] and s["bad_utf8_lines"] == 2
  assert read_all(Path(result["settings"]["output_dir"])) > 0


def empty_units_left_out(result, log):
  assert result["empty_work_units"]["train"] >= 1 and "gave no example" in log
  assert read_all(Path(result["settings"]["output_dir"])) > 0


# --- item 5: a damaged dataset ---------------------------------------------------------------------


def damaged(mutate: Callable[[Path], None]):
  def build(tmp_path, good, monkeypatch):
    target = copy_of(good, tmp_path)
    mutate(target)
    return target
  return build


def shard(folder: Path) -> Path:
  return next(folder.glob(SHARD + "*"))


def truncate(folder: Path) -> None:
  data = shard(folder).read_bytes()
  shard(folder).write_bytes(data[:len(data) // 2])


def garble(folder: Path) -> None:
  data = bytearray(shard(folder).read_bytes())
  data[200:4000] = b"\x55" * 3800
  shard(folder).write_bytes(bytes(data))


def wrong_lengths(folder: Path) -> None:
  lengths = np.load(folder / "lengths-train.npy")
  np.save(folder / "lengths-train.npy", lengths[::-1].copy())  # right count and range, wrong order


# --- item 6: JSONL with a null text ----------------------------------------------------------------


def null_text(tmp_path, good, monkeypatch):
  path = tmp_path / "train.jsonl"
  path.write_text('{"sentence": "fine", "label": "a"}\n{"sentence": null, "label": "b"}\n')
  return path


def read_jsonl(path: Path):
  return read_table(path, "sentence", None, "label")


# --- item 7: an output that cannot be written ------------------------------------------------------


def disk_full(tmp_path, good, monkeypatch):
  """prepare --overwrite over a dataset, and the disk fills while the shards are written."""
  copy_of(good, tmp_path)

  class FullDisk:
    def __init__(self, path, options):
      self.path = path

    def write(self, record):
      raise RuntimeError(f"write() failed: No space left on device; writing {self.path}; at byte 0")
  monkeypatch.setattr(builder_lib.array_record_module, "ArrayRecordWriter", FullDisk)
  return settings(tmp_path, overwrite=True)


def read_only(tmp_path, good, monkeypatch):
  c = settings(tmp_path)
  parent = tmp_path / "ro"
  parent.mkdir()
  c.output_dir = str(parent / "data")
  if os.geteuid() != 0:
    parent.chmod(0o555)
  else:  # root writes anyway: the file system says no instead
    def mkdtemp(*args, prefix="", dir=None, **kwargs):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, prefix + "x"))
    monkeypatch.setattr(atomic.tempfile, "mkdtemp", mkdtemp)
  return c


def old_dataset_kept(target, good) -> None:
  assert (target / "metadata.json").read_bytes() == (good / "metadata.json").read_bytes()


# --- the table -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Attack:
  name: str
  build: Callable  # (tmp_path, good dataset, monkeypatch) -> what `act` takes
  act: Callable
  expect: str | Callable  # the InputError's pattern, or a check of (result, log text)


ATTACKS = [
    # 1. kill -9 at each step of the swap: the next reader/run finishes it; nothing is left behind.
    *[Attack(f"killed_{step}", killed_swap(step), read_then_run_again, is_version(version))
      for step, version in (("in_block", "old"), ("before_swap", "old"), ("old_hidden", "old"),
                            ("new_in_place", "new"), ("deleting_old", "new"))],
    # 2. a dead process's temporary folder is removed (logged); a live one's is kept.
    Attack("stale_partial_of_a_dead_process", stale_partials, prepare_metadata, partials_cleaned),
    # 3. inputs resolved, deduplicated; datasets inside them skipped; no output inside them.
    Attack("output_inside_an_input_folder", output_inside_input, prepare_metadata,
           r"corpus/ds: is inside the input folder .*corpus, whose files are all read as text"),
    Attack("dataset_inside_an_input_folder", dataset_inside_input, prepare_metadata,
           sources_are(3, 24, skipped_datasets=1, duplicate_paths=0)),
    Attack("same_file_named_three_ways", same_file_three_ways, prepare_metadata,
           sources_are(3, 24, skipped_datasets=0, duplicate_paths=2)),
    # 4. empty, Latin-1 and random files; splits and work units without an example.
    Attack("odd_files_and_one_held_out_sentence", odd_files_and_one_document, prepare_metadata,
           r"^the validation split \(1 document\(s\), \d+ tokens\) gave no example: it holds one document "
           r"with a single sentence"),
    Attack("odd_files_in_a_corpus", odd_files_in_a_corpus, prepare_metadata, odd_files_counted),
    Attack("a_chunk_of_invisible_text", invisible_text, prepare_metadata, empty_units_left_out),
    # 5. a damaged dataset.
    Attack("truncated_shard", damaged(truncate), read_all,
           rf"{re.escape(SHARD)}\d+: shard of the 'train' split \(\d+ examples in dataset_info.json\) is truncated or corrupt"),
    Attack("garbled_shard", damaged(garble), read_all,
           rf"{re.escape(SHARD)}\d+: corrupt shard \(example \d+ of the 'train' split cannot be read: .*hash mismatch"),
    Attack("missing_shard", damaged(lambda d: shard(d).unlink()), read_all,
           rf"{re.escape(SHARD)}\d+: shard of the 'train' split .* is missing; the dataset is incomplete"),
    Attack("no_metadata_json", damaged(lambda d: (d / "metadata.json").unlink()), read_all,
           r"data/metadata.json: missing; expected the metadata `flaxbert prepare` writes"),
    Attack("lengths_of_other_examples", damaged(wrong_lengths), read_packed,
           r"lengths-train.npy: says example \d+ of the 'train' split has \d+ tokens, it has \d+"),
    # 6. a null where a text is expected.
    Attack("jsonl_null_text", null_text, read_jsonl, r"train.jsonl:2: 'sentence' is null; expected a string"),
    # 7. nowhere to write: the output named, the OS error said, nothing partial left.
    Attack("disk_full_during_overwrite", disk_full, prepare_metadata,
           r"data: cannot write the output: No space left on device .*\[ENOSPC\]; the partial output was removed"),
    Attack("read_only_output_folder", read_only, prepare_metadata,
           r"ro/data: cannot write the output: .*\[(EACCES|EROFS)\]"),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_hostile_input(attack, good, tmp_path, monkeypatch, caplog):
  target = attack.build(tmp_path, good, monkeypatch)
  if callable(attack.expect):
    attack.expect(attack.act(target), caplog.text)
    return
  with pytest.raises(InputError) as raised:
    attack.act(target)
  message = str(raised.value)
  assert "\n" not in message and re.search(attack.expect, message), message
  output = getattr(target, "output_dir", None)
  if output:  # a failed prepare leaves no partial output, and a replaced dataset as it was
    assert not hidden(Path(output)), hidden(Path(output))
    if getattr(target, "overwrite", False):
      old_dataset_kept(Path(output), good)
