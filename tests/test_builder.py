"""`flaxbert prepare`: a TFDS dataset with the original features, both masking modes, bad input."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import prepare as prepare_config
from corpus_fixtures import write_corpus, write_vocab
from data_prep import corpus as corpus_lib
from data_prep.builder import prepare
from flaxbert.cli import main
from flaxbert.errors import InputError
from flaxbert.text.tokenization import load_tokenizer


def settings(tmp_path, **overrides):
  c = prepare_config.get_config("tiny")
  c.input = (str(write_corpus(tmp_path / "corpus")),)
  c.vocab = str(write_vocab(tmp_path / "vocab.txt"))
  c.output_dir = str(tmp_path / "data")
  c.validation_fraction = 0.2
  for k, v in overrides.items():
    c[k] = v
  return c


def read_split(directory, split):
  builder = tfds.builder_from_directory(str(directory))
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def test_static_dataset_features_and_rules(tmp_path):
  out, metadata = prepare(settings(tmp_path))
  builder = tfds.builder_from_directory(str(out))
  assert set(builder.info.splits) == {"train", "validation"}
  assert builder.info.splits["train"].num_shards >= 2  # many files: hosts read disjoint parts
  tok = load_tokenizer(out)
  train = read_split(out, "train")
  assert len(train) == builder.info.splits["train"].num_examples > 100
  for ex in train[:200]:
    ids, mask, seg = ex["input_ids"], ex["input_mask"], ex["segment_ids"]
    assert ids.shape == (32,) and ex["masked_lm_positions"].shape == (5,)
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any() and not ids[n:].any()
    w = ex["masked_lm_weights"] > 0
    pos = ex["masked_lm_positions"][w]
    original = ids.copy()
    original[pos] = ex["masked_lm_ids"][w]  # a random replacement may itself be [SEP], as in the original
    assert original[0] == tok.cls_id and original[n - 1] == tok.sep_id
    seps = np.flatnonzero(original[:n] == tok.sep_id)
    assert len(seps) == 2  # [CLS] A [SEP] B [SEP] (NSP on)
    assert (seg[:seps[0] + 1] == 0).all() and (seg[seps[0] + 1:n] == 1).all()
    assert (np.diff(pos) > 0).all() and (pos > 0).all() and (pos < n).all()
    assert not np.isin(pos, seps).any()
    assert ex["next_sentence_labels"] in (0, 1)
  assert metadata["sources"]["files"] == 3 and metadata["settings"]["masking"] == "static"
  assert metadata["tokenizer"]["mask_id"] == tok.mask_id == 4


def test_no_document_is_alone_in_a_chunk_of_a_larger_split(tmp_path, caplog):
  """Random next sentences come from the chunk's other documents: a chunk holds at least two (a
  last chunk of one joins the one before), and a split of one document is named in a warning and
  gets real continuations only."""
  rng = np.random.RandomState(0)
  docs = [[f"doc {d} sentence {i} " + "x" * int(rng.randint(1, 300)) for i in range(rng.randint(1, 6))]
          for d in range(41)]
  chunks = corpus_lib.split_documents(iter(docs), tmp_path, chunk_chars=500, validation_fraction=0.2)
  assert chunks.documents == {"train": 32, "validation": 9}
  for split, expected in (("train", [d for i, d in enumerate(docs) if i % 5]), ("validation", docs[::5])):
    files = getattr(chunks, split)
    assert len(files) >= 3
    per_chunk = [[d.split("\n") for d in f.read_text(encoding="utf-8").split("\n\n") if d] for f in files]
    assert all(len(c) >= 2 for c in per_chunk)
    assert [d for c in per_chunk for d in c] == expected  # every document once, in order
  # 5 documents: one held out; its split warns and its pairs are all real continuations.
  c = settings(tmp_path / "one", validation_fraction=0.2)
  c.input = (str(write_corpus(tmp_path / "small", num_files=1, docs_per_file=5, seed=1)),)
  _, metadata = prepare(c)
  assert metadata["documents"] == {"train": 4, "validation": 1}
  assert "validation split holds one document" in caplog.text
  validation = read_split(c.output_dir, "validation")
  assert validation and all(ex["next_sentence_labels"] == 0 for ex in validation)


def test_deterministic_for_a_seed(tmp_path):
  a, _ = prepare(settings(tmp_path / "a"))
  b, _ = prepare(settings(tmp_path / "b"))
  c, _ = prepare(settings(tmp_path / "c", seed=7))
  ea, eb, ec = (read_split(x, "train") for x in (a, b, c))
  assert len(ea) == len(eb)
  assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(ea, eb))
  assert not all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(ea, ec))


def test_prepare_leaves_nothing_in_the_temp_dir(tmp_path, monkeypatch):
  """tfds makes an empty temp folder for each new builder and keeps it (builder._LocalDatasetInfo)."""
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  prepare(settings(tmp_path))
  assert not list(temp.iterdir())


def test_worker_count_does_not_change_the_data(tmp_path):
  one, _ = prepare(settings(tmp_path / "one", num_workers=1))
  two, _ = prepare(settings(tmp_path / "two", num_workers=2))
  for split in ("train", "validation"):
    x, y = read_split(one, split), read_split(two, split)
    assert len(x) == len(y) and all(np.array_equal(p["input_ids"], q["input_ids"]) for p, q in zip(x, y))


def test_dynamic_dataset_is_unmasked(tmp_path):
  out, metadata = prepare(settings(tmp_path, masking="dynamic", dupe_factor=1, random_next_sentence=False))
  ex = read_split(out, "train")
  assert set(ex[0]) == {"input_ids", "input_mask", "segment_ids", "next_sentence_labels"}
  tok = load_tokenizer(out)
  assert not any((e["input_ids"] == tok.mask_id).any() for e in ex)
  assert all(e["next_sentence_labels"] == 0 and not e["segment_ids"].any() for e in ex)
  assert metadata["settings"]["masking"] == "dynamic"


def test_cli_prepare_and_overrides(tmp_path, capsys):
  corpus = write_corpus(tmp_path / "corpus")
  vocab = write_vocab(tmp_path / "vocab.txt")
  code = main(["prepare", "--input", str(corpus), "--vocab", str(vocab), "--output_dir", str(tmp_path / "d"),
               "--max_seq_length", "24", "--max_predictions_per_seq", "4", "--dupe_factor", "1",
               "--seed", "3", "--whole_word_mask", "--config.validation_fraction=0.25",
               "--config.chunk_chars=2000"])
  out = capsys.readouterr().out
  assert code == 0 and "prepared" in out and "train" in out and "sources: 3 files" in out
  info = json.loads((tmp_path / "d" / "metadata.json").read_text())["settings"]
  assert (info["max_seq_length"], info["whole_word_mask"], info["seed"], info["chunk_chars"]) == (24, True, 3, 2000)
  code = main(["prepare", "--input", str(corpus), "--vocab", str(vocab), "--output_dir", str(tmp_path / "e"),
               "--config.max_seq_lenght=12"])
  assert code == 2 and "unknown key 'max_seq_lenght'" in capsys.readouterr().err
  code = main(["prepare", "--input", str(corpus), "--vocab", str(vocab), "--output_dir", str(tmp_path / "e"),
               "--config.dupe_factor=two"])
  assert code == 2 and "--config.dupe_factor=two: expected an integer" in capsys.readouterr().err


def test_bad_input(tmp_path):
  with pytest.raises(InputError, match="nope: no such file or directory"):
    prepare(settings(tmp_path, input=(str(tmp_path / "nope"),)))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "a.txt").write_text("")
  with pytest.raises(InputError, match=r"input .*empty: 0 non-empty document\(s\), too few for a train split"):
    prepare(settings(tmp_path, input=(str(tmp_path / "empty"),)))
  bad_vocab = tmp_path / "bad_vocab.txt"
  bad_vocab.write_text("[PAD]\n[UNK]\nhello\n")
  with pytest.raises(InputError, match="bad_vocab.txt"):
    prepare(settings(tmp_path, vocab=str(bad_vocab)))
  assert not (tmp_path / "data").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data.partial")]


def test_overwrite_replaces_only_a_dataset_and_never_its_own_inputs(tmp_path):
  c = settings(tmp_path)
  with pytest.raises(InputError, match="holds the input .*corpus; writing there would delete what is read"):
    prepare(settings(tmp_path, output_dir=str(tmp_path), overwrite=True))
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "notes.txt").write_text("mine")
  with pytest.raises(InputError, match="exists and is not a dataset written by `flaxbert prepare`"):
    prepare(settings(tmp_path, overwrite=True))
  assert (tmp_path / "data" / "notes.txt").read_text() == "mine"
  (tmp_path / "data" / "notes.txt").unlink()
  prepare(c)
  prepare(settings(tmp_path, overwrite=True, seed=7))  # a dataset is replaced
  assert json.loads((tmp_path / "data" / "metadata.json").read_text())["settings"]["seed"] == 7


def test_interrupted_build_leaves_nothing_that_loads(tmp_path, monkeypatch):
  from data_prep import builder as builder_lib  # pylint: disable=import-outside-toplevel

  def explode(job):
    raise KeyboardInterrupt("killed mid-build")
  monkeypatch.setattr(builder_lib, "_write_chunk", explode)
  with pytest.raises(KeyboardInterrupt):
    prepare(settings(tmp_path, num_workers=1))
  assert not (tmp_path / "data").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data")]


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece_unigram"])
def test_trains_a_vocabulary_when_none_is_given(tmp_path, kind):
  out, metadata = prepare(settings(tmp_path, vocab=None, train_vocab_kind=kind, train_vocab_size=130))
  tok = load_tokenizer(out)  # the vocabulary travels with the dataset
  assert tok.kind == kind.split("_")[0] and tok.vocab_size <= 130
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert metadata["tokenizer"]["kind"] == tok.kind
  ex = read_split(out, "train")[0]
  assert ex["input_ids"][0] == tok.cls_id and (ex["input_ids"] < tok.vocab_size).all()


MULTI_PROCESS = "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"


@pytest.fixture(scope="module")
def beam_corpus(tmp_path_factory):
  """The test corpus plus a chunk of invisible text (train work units without an example), and its
  dataset prepared on the local path: what the Beam runs must reproduce."""
  pytest.importorskip("apache_beam", reason="the beam extra (apache-beam) is not installed")
  c = settings(tmp_path_factory.mktemp("beam_corpus"))
  (Path(c.input[0]) / "z-invisible.txt").write_text("\n\n".join("\u200b" * 200 for _ in range(60)) + "\n")
  out, metadata = prepare(c)
  return c, out, metadata


def test_beam_direct_runner_writes_the_same_dataset(beam_corpus, tmp_path):
  """Stage 2 as a Beam pipeline on two worker processes: the same shards, example lengths and metadata
  as the local path; Beam's own counters, read from the finished pipeline, show that its workers ran
  every work unit and wrote every example."""
  c, local, expected = beam_corpus
  b = c.copy_and_resolve_references()
  b.output_dir, b.beam_options = str(tmp_path / "beam"), MULTI_PROCESS
  beam, metadata = prepare(b)
  info = lambda d: tfds.builder_from_directory(str(d)).info.splits
  for split in ("train", "validation"):
    assert info(beam)[split].shard_lengths == info(local)[split].shard_lengths
    x, y = read_split(local, split), read_split(beam, split)
    assert len(x) == len(y) and all(np.array_equal(p[k], q[k]) for p, q in zip(x, y) for k in p)
    name = expected["lengths_files"][split]
    assert np.array_equal(np.load(beam / name), np.load(local / name))
  for key in ("tokens", "documents", "sources", "empty_work_units", "lengths_files", "tokenizer"):
    assert metadata[key] == expected[key], key
  assert expected["empty_work_units"]["train"] >= 1 and expected["beam"] is None
  splits, empty = info(local), expected["empty_work_units"]
  units = ((splits["train"].num_shards + empty["train"]) // c.dupe_factor
           + splits["validation"].num_shards + empty["validation"])
  assert metadata["beam"] == {"runner": "DirectRunner", "work_units": units,
                              "examples": sum(s.num_examples for s in splits.values()), "worker_processes": 2}
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".beam")]


def test_beam_split_without_examples_fails_as_on_the_local_path(tmp_path):
  """A split without examples is the local path's one-line error under Beam too, and leaves nothing."""
  pytest.importorskip("apache_beam", reason="the beam extra (apache-beam) is not installed")
  corpus = tmp_path / "short"
  corpus.mkdir()
  long = "\n".join(f"w{i} w{i + 1} w{i + 2} w{i + 3} w{i + 4} w{i + 5}." for i in range(30))
  (corpus / "a.txt").write_text("w1 w2 w3.\n\n" + "\n\n".join([long] * 4) + "\n")  # held out: one sentence
  with pytest.raises(InputError, match=r"^the validation split \(1 document\(s\), \d+ tokens\) gave no example: "
                                       r"it holds one document with a single sentence"):
    prepare(settings(tmp_path, input=(str(corpus),), beam_options="--runner=DirectRunner"))
  assert not (tmp_path / "data").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".data")]


def test_beam_runner_precedence_and_errors(tmp_path):
  """beam_runner, else --runner in beam_options, else DirectRunner (Beam's Python runner, not Prism,
  so that --direct_* options hold); a runner or option Beam cannot use is a one-line error before
  any work."""
  pytest.importorskip("apache_beam", reason="the beam extra (apache-beam) is not installed")
  from data_prep import beam as beam_lib  # pylint: disable=import-outside-toplevel
  assert beam_lib.resolve("", "") is None
  direct = beam_lib.resolve("", "--direct_num_workers=2")
  assert direct.name == "DirectRunner" and type(direct.runner).__name__ == "FnApiRunner"
  assert beam_lib.resolve("", "--runner=PrismRunner").name == "PrismRunner"
  chosen = beam_lib.resolve("PrismRunner", "--runner=FlinkRunner --flink_master=localhost:8081")
  assert chosen.name == "PrismRunner" and type(chosen.runner).__name__ == "PrismRunner"
  for overrides, error in (
      ({"beam_runner": "Nope"}, r"beam_runner: unknown runner 'Nope'; expected a Beam runner: .*DirectRunner"),
      ({"beam_options": "--runner=Nope"}, r"beam_options --runner: unknown runner 'Nope'"),
      ({"beam_runner": "no.such.Runner"}, r"beam_runner: cannot load the runner 'no.such.Runner'"),
      ({"beam_options": "--direct_num_workers=two"}, r"beam_options: argument --direct_num_workers: invalid int value"),
      ({"beam_options": "--job_name='x"}, r"beam_options: No closing quotation"),
      ({"beam_runner": "FlinkRunner", "output_dir": "gs://bucket/data"}, r"output_dir: gs://bucket/data is an object "
                                                                          r"store.* FlinkRunner workers cannot reach")):
    with pytest.raises(InputError, match=f"^{error}") as e:
      prepare(settings(tmp_path, **overrides))
    assert "\n" not in str(e.value)
  assert not (tmp_path / "data").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".data")]


def test_tfds_build_command(tmp_path):
  pytest.importorskip("mlcroissant", reason="TFDS's command line needs the tfds_cli extra (mlcroissant)")
  manual = write_corpus(tmp_path / "manual")
  write_vocab(manual / "vocab.txt")
  tfds_cli = Path(sys.executable).parent / "tfds"
  done = subprocess.run([str(tfds_cli), "build", "bert_pretraining", "--imports", "data_prep.builder",
                         "--config", "dynamic", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "data"),
                         "--file_format", "array_record"], capture_output=True, text=True, timeout=600,
                        cwd=Path(__file__).resolve().parents[1], check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  built = tmp_path / "data" / "bert_pretraining" / "dynamic" / "1.0.0"
  train = read_split(built, "train")
  assert len(train) > 10 and set(train[0]) == {"input_ids", "input_mask", "segment_ids", "next_sentence_labels"}
  assert load_tokenizer(built).vocab_size == len((manual / "vocab.txt").read_text().split())


class FlaxbertTestTextCorpus(tfds.core.GeneratorBasedBuilder):
  """A tiny local TFDS text dataset (each example one document), standing in for e.g. wikipedia."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.RandomState(0)
    from corpus_fixtures import sentence  # pylint: disable=import-outside-toplevel
    for i in range(12):
      yield i, {"text": " ".join(sentence(rng).capitalize() for _ in range(rng.randint(2, 12)))}


def test_reads_a_local_tfds_text_dataset(tmp_path):
  FlaxbertTestTextCorpus(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
  out, metadata = prepare(settings(tmp_path, input=(), tfds_name="flaxbert_test_text_corpus",
                                   tfds_data_dir=str(tmp_path / "tfds")))
  assert metadata["sources"]["documents"] == 12 and metadata["sources"]["sentences"] > 24
  assert len(read_split(out, "train")) > 10
  with pytest.raises(InputError, match="is not prepared"):
    prepare(settings(tmp_path / "x", input=(), tfds_name="flaxbert_test_text_corpus",
                     tfds_data_dir=str(tmp_path / "elsewhere")))
