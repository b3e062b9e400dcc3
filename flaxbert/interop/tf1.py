"""Original google-research/bert TF1 checkpoints: bert_config.json + bert_model.ckpt.{index,data-*}.

TensorFlow is imported only here and only when a TF1 checkpoint is read or written.
"""
from pathlib import Path

import numpy as np

from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.models.config import BertConfig, read_json, write_json

CONFIG = "bert_config.json"
PREFIX = "bert_model.ckpt"


def checkpoint_prefix(path: Path) -> Path | None:
  """The checkpoint prefix at `path` (a prefix itself, or a folder holding one), else None."""
  if storage.path(f"{path}.index").is_file():
    return path
  if not path.is_dir():
    return None
  indexes = sorted(path.glob("*.index"))
  if (path / "checkpoint").is_file():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    latest = tf.train.latest_checkpoint(str(path))
    if latest:
      return storage.path(latest)
  if len(indexes) > 1:
    raise InputError(f"{path}: holds {len(indexes)} TF checkpoints ({[i.name for i in indexes]}); "
                     "name one by its prefix, e.g. DIR/bert_model.ckpt")
  return indexes[0].with_suffix("") if indexes else None


def read(path: Path) -> tuple[BertConfig, dict[str, np.ndarray]]:
  prefix = checkpoint_prefix(path)
  if prefix is None:
    raise InputError(f"{path}: no TF checkpoint (*.index + *.data-*) found")
  config_path = prefix.parent / CONFIG
  if not config_path.is_file():
    raise InputError(f"{config_path}: missing; a TF1 BERT checkpoint needs its bert_config.json beside it")
  config = BertConfig.from_original_dict(read_json(config_path), str(config_path))
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    reader = tf.train.load_checkpoint(str(prefix))
  except (tf.errors.OpError, ValueError) as e:
    raise InputError(f"{prefix}: not a readable TF checkpoint ({e.__class__.__name__}: "
                     f"{str(e).splitlines()[0]})") from None
  try:
    return config, {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
  except (tf.errors.OpError, IndexError, ValueError) as e:  # a short .data file: IndexError; garbled: DataLoss
    data = sorted(prefix.parent.glob(f"{prefix.name}.data-*"))
    where = data[0] if len(data) == 1 else f"{prefix}.data-*"
    raise InputError(f"{where}: truncated or corrupt TF checkpoint data; re-download or re-save it "
                     f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def write(dst: Path, config: BertConfig, tensors: dict[str, np.ndarray]) -> None:
  """Writes bert_config.json + bert_model.ckpt.* with the original variable names."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  write_json(dst / CONFIG, config.to_original_dict())
  keys = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=str(dst / PREFIX), tensor_names=keys, shape_and_slices=[""] * len(keys),
                    tensors=[tf.constant(tensors[k]) for k in keys])
  (dst / "checkpoint").write_text(f'model_checkpoint_path: "{PREFIX}"\n'
                                  f'all_model_checkpoint_paths: "{PREFIX}"\n')
