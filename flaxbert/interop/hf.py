"""HF transformers BERT directories: config.json + model.safetensors (or pytorch_model.bin).

Reads single-file and sharded (`*.index.json`) weights; `pytorch_model.bin` is read by
`torch_bin`, which never executes pickled code. Writes config.json + model.safetensors that
`transformers.BertForPreTraining` / `BertModel` load without missing or unexpected keys.
"""
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from flaxbert.errors import InputError
from flaxbert.interop import torch_bin
from flaxbert.models.config import BertConfig, read_json, write_json

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def is_hf_dir(path: Path) -> bool:
  return (path / "config.json").is_file()


def read(path: Path) -> tuple[BertConfig, dict[str, np.ndarray]]:
  config = BertConfig.from_hf_dict(read_json(path / "config.json"), str(path / "config.json"))
  weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
  if weights is None:
    raise InputError(f"{path}: has config.json but no weights; expected one of {list(WEIGHT_FILES)}")
  files = [weights]
  if weights.name.endswith(".index.json"):
    index = read_json(weights)
    if not isinstance(index.get("weight_map"), dict):
      raise InputError(f"{weights}: expected a 'weight_map' object mapping tensor names to files")
    files = [path / f for f in sorted(set(index["weight_map"].values()))]
  tensors = {}
  for f in files:
    tensors.update(_load(f))
  return config, tensors


def _load(f: Path) -> dict[str, np.ndarray]:
  if not f.is_file():
    raise InputError(f"{f}: weight file not found")
  if f.suffix == ".bin":
    return torch_bin.load_torch_state_dict(f)
  try:
    return load_file(f)
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

