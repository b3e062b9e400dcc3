"""flaxbert's own model directory: flaxbert_config.json + params/ (an Orbax checkpoint) [+ vocab.txt].

Parameters are stored exactly (dtype and bits), as training checkpoints store them.
"""
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.interop.tensors import check_params
from flaxbert.models.config import BertConfig, read_json, write_json
from flaxbert.models.pretraining import build_model, param_shapes

CONFIG = "flaxbert_config.json"
PARAMS = "params"
FORMAT_VERSION = 1


def is_native(path: Path) -> bool:
  return (path / CONFIG).is_file()


def read_header(path: Path) -> tuple[BertConfig, bool, bool]:
  header = read_json(path / CONFIG)
  source = str(path / CONFIG)
  if header.get("format") != "flaxbert" or header.get("format_version") != FORMAT_VERSION:
    raise InputError(f"{source}: expected format 'flaxbert' version {FORMAT_VERSION}, got "
                     f"{header.get('format')!r} version {header.get('format_version')!r}")
  for key, kind in (("heads", bool), ("pooler", bool), ("config", dict)):
    if not isinstance(header.get(key), kind):
      raise InputError(f"{source}: field {key!r} must be a {kind.__name__}, got {header.get(key)!r}")
  return BertConfig.from_dict(header["config"], f"{source}: config"), header["heads"], header["pooler"]


def restore_params(directory: Path, source: str) -> dict:
  """Restores an Orbax params tree to host numpy arrays."""
  directory = storage.absolute(directory)  # Orbax reads a relative path as no checkpoint (metadata None)
  if not directory.is_dir():
    raise InputError(f"{directory}: missing; expected the Orbax checkpoint of the parameters")
  try:
    checkpointer = ocp.StandardCheckpointer()
    metadata = getattr(checkpointer.metadata(directory).item_metadata, "tree", None)
    if metadata is None:
      raise ValueError("no Orbax checkpoint metadata")
    target = jax.tree_util.tree_map(lambda m: np.zeros(m.shape, m.dtype), metadata)
    return checkpointer.restore(directory, target)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InputError(f"{source}: cannot restore parameters from {directory} ({e.__class__.__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''})") from None


def read(path: Path) -> tuple[BertConfig, dict, bool, bool]:
  config, heads, pooler = read_header(path)
  params = restore_params(path / PARAMS, str(path))
  check_params(params, param_shapes(build_model(config, heads, pooler)), str(path))
  return config, params, heads, pooler


def write_header(dst: Path, config: BertConfig, heads: bool, pooler: bool) -> None:
  """flaxbert_config.json: also what a training workdir records about its model."""
  write_json(dst / CONFIG, {"format": "flaxbert", "format_version": FORMAT_VERSION, "heads": heads,
                            "pooler": pooler, "config": config.to_dict()})


def write(dst: Path, config: BertConfig, params: dict, heads: bool, pooler: bool) -> None:
  write_header(dst, config, heads, pooler)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save((dst / PARAMS).absolute(), params)
  checkpointer.wait_until_finished()
