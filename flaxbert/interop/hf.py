"""HF transformers BERT directories: config.json + model.safetensors (or pytorch_model.bin).

Reads single-file and sharded (`*.index.json`) weights; `pytorch_model.bin` is read by
`torch_bin`, which never executes pickled code. Writes config.json + model.safetensors that
`transformers.BertForPreTraining` / `BertModel` load without missing or unexpected keys.
"""
import os
from pathlib import Path, PurePosixPath

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from flaxbert import storage
from flaxbert.atomic import within
from flaxbert.errors import InputError
from flaxbert.interop import torch_bin
from flaxbert.models.config import BertConfig, read_json, write_json

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def is_hf_dir(path: Path) -> bool:
  return (path / "config.json").is_file()


def weights_file(path: Path) -> Path:
  """The folder's weights: the first of WEIGHT_FILES present (a sharded one's index file)."""
  weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
  if weights is None:
    raise InputError(f"{path}: has config.json but no weights; expected one of {list(WEIGHT_FILES)}")
  return weights


def read(path: Path) -> tuple[BertConfig, dict[str, np.ndarray]]:
  config = BertConfig.from_hf_dict(read_json(path / "config.json"), str(path / "config.json"))
  weights = weights_file(path)
  files = [weights]
  if weights.name.endswith(".index.json"):
    index = read_json(weights)
    if not isinstance(index.get("weight_map"), dict):
      raise InputError(f"{weights}: expected a 'weight_map' object mapping tensor names to files")
    files = sorted({_shard(weights, name, f) for name, f in index["weight_map"].items()})
  tensors = {}
  for f in files:
    tensors.update(_load(f))
  return config, tensors


def _shard(index: Path, name, entry) -> Path:
  """The shard file an index entry names, confined to the index's folder so that a crafted index
  cannot make the reader open files elsewhere ("../x", "/etc/x", a symlinked sub-folder). The
  shard itself may be a symlink, as the Hugging Face cache makes them (snapshots/REV/f → blobs/)."""
  folder = index.parent
  parts = PurePosixPath(entry).parts if isinstance(entry, str) else ()
  shard = folder.joinpath(*parts) if parts else folder
  if (not parts or PurePosixPath(entry).is_absolute() or "\\" in entry or ".." in parts
      or not within(shard.parent, folder)):
    raise InputError(f"{index}: weight_map entry {str(name)!r:.100} → {entry!r:.200} is outside {folder}; "
                     "expected the name of a weight file in the model folder")
  return shard


def _load(f: Path) -> dict[str, np.ndarray]:
  if not f.is_file():
    raise InputError(f"{f}: weight file not found")
  with storage.local_file(f) as local:  # a remote file: a local copy, for readers of local files
    if f.suffix == ".bin":
      try:
        return torch_bin.load_torch_state_dict(local)
      except InputError as e:  # named as the user named it
        raise InputError(str(e).replace(str(local), str(f))) from None
    try:
      return load_file(local)
    except (SafetensorError, OSError, ValueError) as e:
      raise InputError(f"{f}: not a readable safetensors file ({e})") from None


def write(dst: Path, config: BertConfig, tensors: dict[str, np.ndarray], heads: bool) -> None:
  """Writes config.json + model.safetensors; a headless model is written as HF's BertModel."""
  hf_config = config.to_hf_dict()
  if not heads:
    hf_config["architectures"] = ["BertModel"]
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  save(dst, hf_config, tensors)


def save(dst: Path, hf_config: dict, tensors: dict[str, np.ndarray]) -> None:
  """config.json (transformers' keys, as given) + model.safetensors (tensors under their HF names)."""
  write_json(dst / "config.json", hf_config)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.fspath(dst / "model.safetensors"),
            metadata={"format": "pt"})

