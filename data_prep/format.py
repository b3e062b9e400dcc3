"""The prepared dataset's format, in one place: what `flaxbert prepare` writes (data_prep.builder)
and the pretraining input pipeline reads (flaxbert.pretrain.input_pipeline).

A dataset folder is a TFDS dataset (`tfds.builder_from_directory` opens it; array_record shards,
splits `train` and `validation`) with google-research/bert's TFRecord features, the vocabulary
(`flaxbert.load_tokenizer(D)`), `metadata.json` (the settings it was built with, the tokenizer's
special ids, source statistics) and, per split, every example's token count in index order
(`LENGTHS_FILE`; not written under Beam), from which sequence packing plans its rows.
"""
import os
from pathlib import Path

import tensorflow_datasets as tfds

from flaxbert.errors import InputError

MASKINGS = ("static", "dynamic")  # masks stored in the examples | drawn by the input pipeline each epoch
# The features of a batch, as the original's TFRecords name them (static masking stores them all;
# dynamic masking stores the unmasked pairs, and the pipeline adds the masks).
FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights", "next_sentence_labels")
# Per split, every example's token count (its input_mask's sum, e.g. as uint16), in the split's index order.
LENGTHS_FILE = "lengths-{split}.npy"


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
  """The prepared dataset, with a clear error when the folder is not (or not yet) one."""
  directory = Path(directory)
  if not (directory / "dataset_info.json").is_file():
    raise InputError(f"{directory}: not a prepared dataset (no dataset_info.json); run `flaxbert prepare`")
  return tfds.builder_from_directory(os.fspath(directory))
