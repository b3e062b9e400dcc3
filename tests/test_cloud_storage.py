"""The whole flow on an object store: corpus, dataset, workdir and export in gs:// (a local GCS
emulator, tests/object_store.py) give what the same flow gives on local disk; outputs there never
look complete before they are, and nothing there is replaced."""
import json

import pytest

from configs import prepare as prepare_config
from corpus_fixtures import assert_params_equal, final_params, tiny_pretrain_config, write_corpus, write_vocab
from data_prep.builder import prepare
from flaxbert import atomic, storage
from flaxbert.errors import InputError
from flaxbert.interop import pretrained
from flaxbert.pretrain.job import train_and_evaluate
from object_store import gcs_emulator

BUCKET = "gs://flaxbert-test"


@pytest.fixture(scope="module")
def gcs():
  with gcs_emulator(BUCKET.removeprefix("gs://")):
    yield BUCKET


@pytest.fixture(scope="module")
def sources(gcs, tmp_path_factory):
  """The tiny corpus and vocab on local disk and their copies in the bucket."""
  local = tmp_path_factory.mktemp("cloud")
  corpus, vocab = write_corpus(local / "corpus", num_files=4), write_vocab(local / "vocab.txt")
  for name, path in storage.files(corpus):
    storage.copy(path, f"{gcs}/corpus/{name}")
  storage.copy(vocab, f"{gcs}/vocab.txt")
  return {"local": (str(corpus), str(vocab), local), "gcs": (f"{gcs}/corpus", f"{gcs}/vocab.txt")}


def prepare_settings(corpus, vocab, output):
  c = prepare_config.get_config("tiny")
  c.input, c.vocab, c.output_dir, c.validation_fraction = (corpus,), vocab, str(output), 0.2
  return c


@pytest.fixture(scope="module")
def datasets(sources, gcs):
  corpus, vocab, local = sources["local"]
  return {"local": prepare(prepare_settings(corpus, vocab, local / "data"))[0],
          "gcs": prepare(prepare_settings(*sources["gcs"], f"{gcs}/data"))[0]}


def test_a_dataset_prepared_in_the_bucket_is_the_local_one(datasets):
  local, remote = datasets["local"], datasets["gcs"]
  names = [name for name, _ in storage.files(local)]
  assert [name for name, _ in storage.files(remote)] == names
  for name in names:
    if name.endswith((".array_record", ".npy")) or "array_record-" in name:
      assert storage.path(remote / name).read_bytes() == (local / name).read_bytes(), name
  remote_meta, local_meta = (json.loads((d / "metadata.json").read_text()) for d in (remote, local))
  for key in ("tokens", "sources_summary", "documents", "tokenizer"):
    assert remote_meta[key] == local_meta[key], key


def test_pretraining_resumes_and_exports_in_the_bucket(datasets, gcs, tmp_path):
  straight = tmp_path / "straight"
  train_and_evaluate(tiny_pretrain_config(datasets["local"]), straight)
  workdir = f"{gcs}/run"
  stopped = tiny_pretrain_config(datasets["gcs"], num_train_steps=3, **{"optim.num_train_steps": 6})
  train_and_evaluate(stopped, workdir)
  summary = train_and_evaluate(tiny_pretrain_config(datasets["gcs"], **{"optim.num_train_steps": 6}), workdir)
  assert summary["step"] == 6
  run = storage.path(workdir)
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "loss" in r] == [2, 3, 4, 6]  # both runs' records, each once
  assert list(run.glob("events.out.tfevents*")) and (run / "checkpoints" / "6" / "flaxbert_digest.json").is_file()
  pretrained.convert(workdir, f"{gcs}/hf", "hf")
  for source in (workdir, f"{gcs}/hf"):
    assert_params_equal(final_params(source), final_params(straight))
  with pytest.raises(InputError, match="object store cannot replace a folder"):
    pretrained.convert(workdir, f"{gcs}/hf", "hf", overwrite=True)


def test_a_failed_upload_leaves_nothing_that_looks_complete(sources, gcs, monkeypatch):
  copied = []

  def failing_copy(src, dst):
    if len(copied) == 3:
      raise OSError(28, "No space left on device")
    copied.append(dst)
    with open(src, "rb") as f, storage.path(dst).open("wb") as g:
      g.write(f.read())
  monkeypatch.setattr(storage, "_copy_file", failing_copy)
  with pytest.raises(OSError):
    prepare(prepare_settings(*sources["gcs"], f"{gcs}/broken"))
  assert len(copied) == 3 and not storage.path(f"{gcs}/broken").exists()
  assert not {"dataset_info.json", "metadata.json"} & {storage.path(d).name for d in copied}  # uploaded last


def test_a_bucket_folder_that_is_not_empty_is_not_replaced(sources, gcs):
  storage.path(f"{gcs}/taken/notes.txt").write_text("mine")
  with pytest.raises(InputError, match="exists and is not empty; choose a new path or pass overwrite"):
    prepare(prepare_settings(*sources["gcs"], f"{gcs}/taken"))
  settings = prepare_settings(*sources["gcs"], f"{gcs}/taken")
  settings.overwrite = True
  with pytest.raises(InputError, match="object store cannot replace a folder"):
    prepare(settings)
  assert storage.path(f"{gcs}/taken/notes.txt").read_text() == "mine"


def test_uris_are_told_from_local_paths():
  assert storage.is_remote("gs://b/x") and storage.is_remote("s3://b") and not storage.is_remote("/tmp/gs:/x")
  assert str(storage.path("gs://b/x/y")) == "gs://b/x/y" and storage.path("gs://b/x/y").parent.name == "x"
  assert atomic.within("gs://b/x/y", "gs://b/x") and not atomic.within("gs://b/xy", "gs://b/x")
  assert not atomic.within("gs://b/x", "/tmp")


def test_fine_tuning_reads_and_writes_the_bucket_as_local_disk(gcs, tmp_path):
  from finetune_fixtures import tiny_finetune_config, write_pretrained, write_sst2  # pylint: disable=import-outside-toplevel
  from flaxbert.finetune.job import train_and_evaluate as finetune  # pylint: disable=import-outside-toplevel
  local = {"bert": write_pretrained(tmp_path / "bert"), "train": write_sst2(tmp_path / "train.tsv", 48, 0),
           "dev": write_sst2(tmp_path / "dev.tsv", 24, 1)}
  remote = {key: f"{gcs}/ft-inputs/{path.name}" for key, path in local.items()}
  for key, path in local.items():
    for name, file in storage.files(path) if path.is_dir() else [("", path)]:
      storage.copy(file, f"{remote[key]}/{name}" if name else remote[key])
  runs = {}
  for where, paths, workdir in (("local", local, tmp_path / "ft"), ("gcs", remote, f"{gcs}/ft")):
    config = tiny_finetune_config("glue_sst2", paths["bert"], paths["train"], paths["dev"], num_epochs=1.0)
    finetune(config, workdir)
    runs[where] = storage.path(workdir)
  for name in ("eval_results.json", "predictions.jsonl"):
    assert (runs["gcs"] / name).read_text() == (runs["local"] / name).read_text(), name
  assert json.loads((runs["gcs"] / "task.json").read_text())["task"] == "glue_sst2"
