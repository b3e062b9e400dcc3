"""Task data from locally prepared TFDS datasets (mocked: tfds.testing.mock_data, no download)."""
import pytest
import tensorflow_datasets as tfds

from flaxbert.errors import InputError
from flaxbert.finetune.tasks import tfds_source


def test_glue_splits_become_text_examples():
  with tfds.testing.mock_data(num_examples=6):
    sst2 = tfds_source.read_text_pairs("tfds:glue/sst2:train", ["0", "1"])
    mnli = tfds_source.read_text_pairs("tfds:glue/mnli:validation_matched", ["contradiction", "entailment", "neutral"])
    qnli = tfds_source.read_text_pairs("tfds:glue/qnli:train", ["entailment", "not_entailment"])
  assert len(sst2) == 6 and all(e.text_b is None and e.label in ("0", "1") for e in sst2)
  assert sst2[0].source == "tfds:glue/sst2:train:1"
  assert all(e.text_b is not None and e.label in ("contradiction", "entailment", "neutral") for e in mnli)
  # QNLI has question + sentence: a pair, though "sentence" alone names SST-2's text.
  assert all(e.text_b is not None and e.text_a != e.text_b for e in qnli)


def test_squad_split_becomes_squad_json():
  with tfds.testing.mock_data(num_examples=4):
    data = tfds_source.squad_json("tfds:squad/v1.1:validation")["data"]
  qas = [q for a in data for p in a["paragraphs"] for q in p["qas"]]
  assert len(qas) == 4 and all({"id", "question", "answers"} <= set(q) for q in qas)


def test_missing_dataset_and_bad_spec_are_named(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(InputError, match="not available locally"):
    tfds_source.read_text_pairs("tfds:glue/sst2:train", None)
  with pytest.raises(InputError, match="tfds:NAME"):
    tfds_source.read_text_pairs("tfds:glue", None)


def test_qa_task_reads_a_squad_split_with_the_files_checks():
  from configs import finetune  # pylint: disable=import-outside-toplevel
  from flaxbert.finetune.tasks.registry import get_task  # pylint: disable=import-outside-toplevel
  task = get_task(finetune.get_config("squad_v1,tiny"))
  with tfds.testing.mock_data(num_examples=4):
    examples = task.read("tfds:squad/v1.1:validation", False, "eval_path")
  assert len(examples) == 4 and all(e.question and e.context for e in examples)
