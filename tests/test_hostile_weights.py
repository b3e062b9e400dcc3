"""Hostile weights: inputs that cannot be right give a correct result or one clear line naming the file and tensor.

A table of attacks: each builds a bad input from a tiny model (built once per module) in its own
folder, the test's cwd (named by a relative path, except where that would be a second attack: a
flaxbert folder named relatively is a case of its own); an action reads it; the outcome is a
regex the one-line InputError must match (and no output is written), or a check of the result
and the log.
"""
import json
import shutil
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import flaxbert
from finetune_fixtures import write_pretrained
from flaxbert.errors import InputError
from flaxbert.finetune.embed import embed_file
from flaxbert.interop import task_models, tf1
from flaxbert.interop.pretrained import convert, load
from flaxbert.interop.torch_bin import load_torch_state_dict
from flaxbert.models.weights import flat

Q_HF = "bert.encoder.layer.0.attention.self.query.weight"
Q_TF = "bert/encoder/layer_0/attention/self/query/kernel"
Q = ("bert", "encoder", "layer_0", "attention", "query", "kernel")
OUTPUTS = ("out", "v.npy")  # what the actions write; nothing of it may appear when the input is refused


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
  root = tmp_path_factory.mktemp("models")
  return {fmt: write_pretrained(root / fmt, fmt) for fmt in ("hf", "tf1")}


def _leaf(params: dict, path=Q):
  for k in path:
    params = params[k]
  return params


# --- building bad inputs (in the cwd) --------------------------------------------------------

def _hf(models, **replace) -> Path:
  """The tiny HF folder with some tensors replaced (a None value removes one)."""
  shutil.copytree(models["hf"], "m")
  tensors = {**load_file("m/model.safetensors"), **replace}
  save_file({k: v for k, v in tensors.items() if v is not None}, "m/model.safetensors")
  return Path("m")


def _hf_torch(models, cast: Callable[[dict], dict]) -> Path:
  """The tiny HF folder as pytorch_model.bin, its tensors passed through `cast` (name → array)."""
  import torch  # pylint: disable=import-outside-toplevel
  d = _hf(models)
  tensors = cast(load_file(d / "model.safetensors"))
  (d / "model.safetensors").unlink()
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, d / "pytorch_model.bin")
  return d


def _tf1(models, **replace) -> Path:
  config, tensors = tf1.read(models["tf1"])
  Path("m").mkdir()
  tf1.write(Path("m"), config, {**tensors, **replace})
  return Path("m")


def _tf1_data(models, damage: Callable[[bytes], bytes]) -> Path:
  shutil.copytree(models["tf1"], "m")
  data = Path("m/bert_model.ckpt.data-00000-of-00001")
  data.write_bytes(damage(data.read_bytes()))
  return Path("m")


def _native_with_inf(models) -> Path:
  model, params = flaxbert.from_pretrained(models["hf"])
  _leaf(params)[0, 0, 1] = np.inf
  return flaxbert.save_pretrained("m", model, params).absolute()  # absolute: relative ones are cases of their own


def _sharded(models, entry: Callable[[Path], str]) -> Path:
  """A sharded HF folder whose index sends every tensor to entry(the real shard's path)."""
  d = _hf(models)
  Path("other").mkdir()
  shard = Path("other/model.safetensors").absolute()
  (d / "model.safetensors").rename(shard)
  tensors = load_file(shard)
  (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: entry(shard) for k in tensors}}))
  return d


def _sequence_classifier(models, classifier: np.ndarray) -> Path:
  """A transformers BertForSequenceClassification folder (read by task_models, not pretrained.load)."""
  d = _hf(models)
  tensors = {k: v for k, v in load_file(d / "model.safetensors").items() if k.startswith("bert.")}
  save_file({**tensors, "classifier.weight": classifier, "classifier.bias": np.zeros(2, np.float32)},
            d / "model.safetensors")
  config = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"],
                                             "id2label": {"0": "no", "1": "yes"}}))
  return d


def _torch_file(make: Callable) -> Path:
  """A pytorch_model.bin of torch.save({"w": make(torch)})."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.save({"w": make(torch)}, "w.bin")
  return Path("w.bin")


def _deflated(path: Path) -> Path:
  """The archive re-zipped with compression: a storage record that inflates past the file's size."""
  with zipfile.ZipFile(path) as src, zipfile.ZipFile("z.bin", "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
      dst.writestr(info.filename, src.read(info))
  return Path("z.bin")


# --- actions ------------------------------------------------------------------------------------

def _to_flaxbert(path):
  return convert(path, "out", "flaxbert")


def _to_hf(path):
  return convert(path, "out", "hf")


def _embed(path):
  Path("s.txt").write_text("the first sentence\nand a second one\n")
  return embed_file(str(path), "s.txt", "v.npy")


# --- outcomes that are results ------------------------------------------------------------------

def _float32_with_note(loaded, log: str) -> None:
  """The float16 kernel arrives as float32, in what was read and what was written; one note names it."""
  for params in (loaded.params, load(Path("out").absolute()).params):
    assert {np.asarray(x).dtype.name for x in flat(params).values()} == {"float32"}
  assert loaded.config.param_dtype == "float32"
  assert f"cast 1 tensor(s) to float32 (the model holds one floating dtype): {Q_HF} (float16)" in log


def _all_float32(loaded, log: str) -> None:
  assert {x.dtype.name for x in flat(loaded.params).values()} == {"float32"}
  assert "model.safetensors" not in log and "pytorch_model.bin: cast" in log


def _same_as_absolute(result, _log) -> None:
  """What the relative path gave (and, converted, wrote) is what the absolute path gives."""
  params = result[1] if isinstance(result, tuple) else result.params
  reference = load(Path("m").absolute()).params
  for got in [params] + ([load("out").params] if Path("out").exists() else []):
    np.testing.assert_array_equal(_leaf(got), _leaf(reference))


def _unit_vectors(vectors, _log) -> None:
  assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1)


def _relative_flaxbert(models) -> Path:
  convert(models["hf"], "m", "flaxbert")
  return Path("m")


class Case(NamedTuple):
  name: str
  build: Callable  # (models) → the path of the bad input, built in the cwd
  action: Callable  # (path) → result
  expect: str | Callable  # the InputError's regex, or check(result, log text)


BAD_INDEX = r"m/model\.safetensors\.index\.json: weight_map entry '.*' → '{}' is outside m; expected the name"
QUERY = r"m/model\.safetensors: tensor 'bert\.encoder\.layer\.0\.attention\.self\.query\.weight'"
CASES = [
    # 1. dtypes and values: one check (interop.tensors.check_weights) behind every reader
    Case("int32-kernel-hf", lambda m: _hf(m, **{Q_HF: np.arange(1024, dtype=np.int32).reshape(32, 32)}),
         _to_flaxbert, QUERY + r" has dtype int32; expected floating-point weights"),
    Case("float16-kernel-cast", lambda m: _hf(m, **{Q_HF: np.ones((32, 32), np.float16)}), _to_flaxbert,
         _float32_with_note),
    Case("bool-kernel-torch-bin", lambda m: _hf_torch(m, lambda t: {**t, Q_HF: t[Q_HF] > 0}), load,
         r"m/pytorch_model\.bin: tensor '.*query\.weight' has dtype bool; expected floating-point"),
    Case("float64-torch-bin-cast", lambda m: _hf_torch(m, lambda t: {k: v.astype(np.float64) for k, v in t.items()}),
         load, _all_float32),
    Case("int32-kernel-tf1", lambda m: _tf1(m, **{Q_TF: np.zeros((32, 32), np.int32)}), load,
         r"m/bert_model\.ckpt: tensor 'bert/encoder/layer_0/attention/self/query/kernel' has dtype int32"),
    Case("nan-kernel-embed", lambda m: _hf(m, **{Q_HF: np.full((32, 32), np.nan, np.float32)}), _embed,
         QUERY + r" holds 1024 NaN/Inf value\(s\) of 1024; finite weights expected"),
    Case("inf-in-flaxbert-folder", _native_with_inf, _to_hf,
         r"m/params: tensor 'bert/encoder/layer_0/attention/query/kernel' holds 1 NaN/Inf value\(s\)"),
    Case("nan-classifier-task-folder", lambda m: _sequence_classifier(m, np.full((2, 32), np.nan, np.float32)),
         task_models.read, r"m/model\.safetensors: tensor 'classifier\.weight' holds 64 NaN/Inf"),
    # 2. a sharded index stays inside its folder
    Case("index-escapes-folder", lambda m: _sharded(m, lambda shard: "../other/model.safetensors"), load,
         BAD_INDEX.format(r"\.\./other/model\.safetensors")),
    Case("index-absolute-path", lambda m: _sharded(m, str), load, BAD_INDEX.format(".*/other/model\\.safetensors")),
    # 3. a flaxbert folder named by a relative path
    Case("relative-flaxbert-to-hf", _relative_flaxbert, _to_hf, _same_as_absolute),
    Case("relative-flaxbert-from-pretrained", _relative_flaxbert, flaxbert.from_pretrained, _same_as_absolute),
    Case("relative-flaxbert-embed", _relative_flaxbert, _embed, _unit_vectors),
    # 4. damaged TF1 data
    Case("tf1-data-truncated", lambda m: _tf1_data(m, lambda b: b[:len(b) // 2]), load,
         r"m/bert_model\.ckpt\.data-00000-of-00001: truncated or corrupt TF checkpoint data"),
    Case("tf1-data-garbled", lambda m: _tf1_data(m, lambda b: b[:64] + bytes(x ^ 0xFF for x in b[64:128]) + b[128:]),
         load, r"m/bert_model\.ckpt\.data-00000-of-00001: truncated or corrupt TF checkpoint data"),
    # 5. pytorch_model.bin views bigger than their storage, storages bigger than the file
    Case("torch-stride0-4TiB", lambda m: _torch_file(lambda torch: torch.zeros(1).expand(1 << 40)),
         load_torch_state_dict, r"w\.bin: tensor 'w': size \(1099511627776,\) \(stride \(0,\)\) is 1099511627776 "
                                r"elements, but its storage '0' holds only 1 × float32"),
    Case("torch-overlapping-view", lambda m: _torch_file(lambda torch: torch.arange(12.).as_strided((4, 4), (1, 1))),
         load_torch_state_dict, r"w\.bin: tensor 'w': size \(4, 4\) .* is 16 elements, but its storage '0' holds "
                                r"only 12"),
    Case("torch-deflate-bomb", lambda m: _deflated(_torch_file(lambda torch: torch.zeros(1 << 20))),
         load_torch_state_dict, r"z\.bin: storage record '.*/data/0' declares 4194304 bytes, more than the whole file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case, models, tmp_path, monkeypatch, caplog):
  monkeypatch.chdir(tmp_path)
  path = case.build(models)
  if callable(case.expect):
    with caplog.at_level("WARNING", logger="flaxbert"):
      result = case.action(path)
    case.expect(result, caplog.text)
    return
  with pytest.raises(InputError, match=case.expect) as e:
    case.action(path)
  assert "\n" not in str(e.value)  # the CLI prints it as one line
  assert not any(Path(o).exists() for o in OUTPUTS)
