"""The prepared dataset's format, in one place: what `flaxbert prepare` writes (data_prep.builder)
and the pretraining input pipeline reads (flaxbert.pretrain.input_pipeline).

A dataset folder is a TFDS dataset (`tfds.builder_from_directory` opens it; array_record shards,
splits `train` and `validation`) with google-research/bert's TFRecord features, the vocabulary
(`flaxbert.load_tokenizer(D)`), `metadata.json` (the settings it was built with, the tokenizer's
special ids, source statistics) and, per split, every example's token count in index order
(`LENGTHS_FILE`, with or without Beam), from which sequence packing plans its rows.
"""
import json
import os
from pathlib import Path

import tensorflow_datasets as tfds

from flaxbert import storage
from flaxbert.atomic import recover
from flaxbert.errors import InputError

MASKINGS = ("static", "dynamic")  # masks stored in the examples | drawn by the input pipeline each epoch
# The features of a batch, as the original's TFRecords name them (static masking stores them all;
# dynamic masking stores the unmasked pairs, and the pipeline adds the masks).
FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights", "next_sentence_labels")
# Per split, every example's token count (its input_mask's sum, e.g. as uint16), in the split's index order.
LENGTHS_FILE = "lengths-{split}.npy"
# What readers need from metadata.json (the input pipeline, pretraining).
METADATA_KEYS = {"settings": ("masking", "max_seq_length", "max_predictions_per_seq", "random_next_sentence"),
                 "tokenizer": ("vocab_size", "pad_id", "cls_id", "sep_id", "mask_id")}
_RERUN = "run `flaxbert prepare` again"


def feature_kinds(masking: str) -> dict[str, str]:
  """The stored features (name → "int" | "float") of a dataset with this masking."""
  if masking not in MASKINGS:
    raise InputError(f"masking: expected one of {MASKINGS}, got {masking!r}")
  kinds = {"input_ids": "int", "input_mask": "int", "segment_ids": "int", "next_sentence_labels": "int"}
  if masking == "static":
    kinds.update(masked_lm_positions="int", masked_lm_ids="int", masked_lm_weights="float")
  return kinds


def is_prepared(directory: Path) -> bool:
  """Whether `directory` holds a finished dataset of `prepare` (what overwrite may replace)."""
  return (directory / "metadata.json").is_file() and (directory / "dataset_info.json").is_file()


def open_dataset(directory: str | os.PathLike) -> tfds.core.DatasetBuilder:
  """The prepared dataset, with a clear error when the folder is not (or not yet) one; a swap
  that a killed `prepare --overwrite` left half done is finished first (flaxbert.atomic.recover)."""
  directory = storage.path(directory)
  recover(directory, partials=False)  # a writer's temporary folders are the next writer's to remove
  if not (directory / "dataset_info.json").is_file():
    raise InputError(f"{directory}: not a prepared dataset (no dataset_info.json); run `flaxbert prepare`")
  _check_metadata(directory / "metadata.json")
  return tfds.builder_from_directory(os.fspath(directory))


def _check_metadata(path: Path) -> None:
  if not path.is_file():
    raise InputError(f"{path}: missing; expected the metadata `flaxbert prepare` writes beside "
                     f"dataset_info.json (settings, tokenizer ids); {_RERUN}")
  try:
    metadata = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: not readable JSON ({e}); {_RERUN}") from None
  for section, keys in METADATA_KEYS.items():
    value = metadata.get(section) if isinstance(metadata, dict) else None
    missing = [k for k in keys if not isinstance(value, dict) or k not in value]
    if missing:
      raise InputError(f"{path}: expected {section!r} with {', '.join(keys)}; missing {', '.join(missing)}; {_RERUN}")


def check_shards(builder: tfds.core.DatasetBuilder, split: str) -> None:
  """Every shard of `split` is there and holds as many records as dataset_info.json says (each
  shard's footer is read, not its records): a missing, truncated or replaced shard is an error
  naming it. A block garbled inside a shard shows only when it is read (see the input pipeline)."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  info = builder.info.splits[split]
  for path, expected in zip(info.filepaths, info.shard_lengths):
    where = f"{path}: shard of the {split!r} split ({expected} examples in dataset_info.json)"
    if not storage.path(path).is_file():
      raise InputError(f"{where} is missing; the dataset is incomplete, {_RERUN}")
    try:
      reader = array_record_module.ArrayRecordReader(os.fspath(path), "readahead_buffer_size:0")
      count = reader.num_records() if reader.ok() else None
      reader.close()
    except RuntimeError as e:
      count = _one_line(e) or None
    if count != expected:
      got = "it cannot be opened" if count is None else f"it holds {count}" if isinstance(count, int) else count
      raise InputError(f"{where} is truncated or corrupt ({got}); {_RERUN}")


def corrupt_shard(builder: tfds.core.DatasetBuilder, split: str, index: int, error: Exception) -> InputError:
  """The error for example `index` of `split` that cannot be read, naming the shard that holds it."""
  info = builder.info.splits[split]
  rest, shard = index, "a shard"
  for path, count in zip(info.filepaths, info.shard_lengths):
    if rest < count:
      shard = os.fspath(path)
      break
    rest -= count
  return InputError(f"{shard}: corrupt shard (example {index} of the {split!r} split cannot be read: "
                    f"{_one_line(error)}); {_RERUN}")


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())[:300]
