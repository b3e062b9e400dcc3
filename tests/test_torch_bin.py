"""torch_bin: reading pytorch_model.bin without torch, checked against torch.load(weights_only=True)."""
import builtins
import collections
import io
import os
import pickle
import subprocess
import zipfile

import ml_dtypes
import numpy as np
import pytest

from flaxbert.errors import InputError
from flaxbert.interop.torch_bin import load_torch_state_dict

torch = pytest.importorskip("torch")

_NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16,
              torch.float64: np.float64, torch.int64: np.int64, torch.int32: np.int32,
              torch.int16: np.int16, torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_,
              # Saved untyped and rebuilt by _rebuild_tensor_v3:
              torch.uint16: np.uint16, torch.uint32: np.uint32, torch.uint64: np.uint64,
              torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn, torch.float8_e5m2: ml_dtypes.float8_e5m2}


def _as_numpy(tensors: dict) -> dict:
  return {k: np.frombuffer(t.detach().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy(),
                           _NP_DTYPES[t.dtype]).reshape(t.shape) for k, t in tensors.items()}


def _assert_same(loaded: dict, reference: dict) -> None:
  """Same keys in the same order; per tensor the same dtype, shape and bytes; C-contiguous arrays."""
  assert list(loaded) == list(reference)
  for name, ref in reference.items():
    arr = loaded[name]
    assert isinstance(arr, np.ndarray) and arr.flags.c_contiguous, name
    assert arr.dtype == np.dtype(_NP_DTYPES[ref.dtype]), name
    assert arr.shape == tuple(ref.shape), name
    ref_bytes = ref.detach().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    assert arr.tobytes() == ref_bytes, name


def _realistic_state_dict() -> dict:
  torch.manual_seed(0)
  sd = collections.OrderedDict()
  for dtype in _NP_DTYPES:
    if dtype.is_floating_point:
      sd[f"dense.{dtype}"] = torch.randn(3, 5).to(dtype)
    elif dtype == torch.bool:
      sd["mask"] = torch.randn(4, 2) > 0
    else:
      sd[f"ids.{dtype}"] = torch.randint(0, 100, (7,)).to(dtype)
  sd["scalar"] = torch.tensor(-2.75)
  sd["step"] = torch.tensor(12345678901, dtype=torch.int64)
  sd["transposed"] = torch.randn(4, 6).t()
  sd["strided"] = torch.randn(5, 8)[1::2, ::3]
  base = torch.randn(40)
  sd["shared.a"] = base[3:13].view(2, 5)
  sd["shared.b"] = base[10:34].view(4, 6)
  sd["negated"] = torch._neg_view(torch.randn(3))  # pylint: disable=protected-access
  sd["param"] = torch.nn.Parameter(torch.randn(2, 2))
  sd["param_with_state"] = torch.nn.Parameter(torch.randn(3), requires_grad=False)
  sd["param_with_state"].note = "pickled by _rebuild_parameter_with_state"
  linear = torch.nn.Linear(6, 3)
  sd.update({f"linear.{k}": v for k, v in linear.state_dict().items()})
  embed = torch.nn.Embedding(9, 6)
  sd["embeddings.word_embeddings.weight"] = embed.weight.detach()
  sd["cls.predictions.decoder.weight"] = embed.weight.detach()  # tied: the very same storage
  return sd


def test_matches_torch_load(tmp_path):
  path = tmp_path / "pytorch_model.bin"
  torch.save(_realistic_state_dict(), path)
  reference = torch.load(path, weights_only=True)
  # The file holds what the test is about: views with offsets and strides, and shared storages.
  assert not reference["transposed"].is_contiguous() and not reference["strided"].is_contiguous()
  assert reference["shared.b"].storage_offset() == 10
  assert reference["shared.a"].untyped_storage().data_ptr() == reference["shared.b"].untyped_storage().data_ptr()
  assert reference["negated"].is_neg()
  assert reference["scalar"].dim() == 0
  loaded = load_torch_state_dict(path)
  _assert_same(loaded, reference)
  assert loaded["scalar"].shape == () and loaded["scalar"] == np.float32(-2.75)
  assert loaded["step"] == 12345678901
  np.testing.assert_array_equal(loaded["shared.a"].reshape(-1)[7:], loaded["shared.b"].reshape(-1)[:3])
  assert loaded["negated"].tolist() == reference["negated"].tolist()


def test_reads_str_path_and_any_archive_prefix(tmp_path):
  sd = {"w": torch.arange(6, dtype=torch.float32).view(2, 3)}
  torch.save(sd, tmp_path / "a.bin")
  with zipfile.ZipFile(tmp_path / "a.bin") as src, zipfile.ZipFile(tmp_path / "b.bin", "w") as dst:
    for info in src.infolist():
      dst.writestr("some-other-name/" + info.filename.split("/", 1)[1], src.read(info))
  loaded = load_torch_state_dict(str(tmp_path / "b.bin"))
  _assert_same(loaded, sd)


def _swap_to_big_endian(src, dst, itemsizes: dict[str, int]) -> None:
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
    for info in zin.infolist():
      data = zin.read(info)
      folder, _, key = info.filename.rpartition("/")
      if info.filename.endswith("/byteorder"):
        data = b"big"
      elif folder.endswith("/data") and itemsizes[key] > 1:
        data = np.frombuffer(data, f"u{itemsizes[key]}").byteswap().tobytes()
      zout.writestr(info.filename, data)


def test_big_endian_byteorder_is_converted(tmp_path):
  sd = {"f32": torch.randn(3, 2), "bf16": torch.randn(4).to(torch.bfloat16), "i64": torch.arange(-3, 3),
        "f16": torch.randn(2).half(), "i8": torch.arange(-2, 2, dtype=torch.int8), "b": torch.tensor([True, False])}
  torch.save(sd, tmp_path / "little.bin")
  # Storage keys are numbered in order of first use: one storage per tensor here.
  _swap_to_big_endian(tmp_path / "little.bin", tmp_path / "big.bin",
                      {str(i): t.element_size() for i, t in enumerate(sd.values())})
  _assert_same(_as_numpy(torch.load(tmp_path / "big.bin", weights_only=True)), sd)  # torch agrees
  _assert_same(load_torch_state_dict(tmp_path / "big.bin"), sd)


def _write_archive(path, payload: bytes, records: dict[str, bytes] | None = None, byteorder: bytes = b"little"):
  """A zip laid out exactly like torch.save's, with a hand-made data.pkl."""
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", payload)
    z.writestr("archive/byteorder", byteorder)
    for key, data in (records or {}).items():
      z.writestr(f"archive/data/{key}", data)
    z.writestr("archive/version", b"3\n")


class _System:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


class _Eval(_System):
  def __reduce__(self):
    return builtins.eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)


class _Subprocess(_System):
  def __reduce__(self):
    return subprocess.call, (["touch", str(self.marker)],)


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("payload_type, qualname", [
    (_System, f"{os.system.__module__}.system"), (_Eval, "builtins.eval"), (_Subprocess, "subprocess.call")])
def test_planted_payload_is_refused_not_run(tmp_path, payload_type, qualname, protocol):
  marker = tmp_path / "pwned"
  payload = pickle.dumps(collections.OrderedDict(weight=payload_type(marker)), protocol=protocol)
  path = tmp_path / "pytorch_model.bin"
  _write_archive(path, payload)
  with pytest.raises(InputError, match=f"refusing to unpickle global '{qualname}'") as e:
    load_torch_state_dict(path)
  assert str(path) in str(e.value) and "code-execution" in str(e.value)
  assert not marker.exists()
  pickle.loads(payload)  # the payload is live: plain pickle does run it
  assert marker.exists()


def test_pickled_module_is_refused(tmp_path):
  torch.save(torch.nn.Linear(2, 2), tmp_path / "model.bin")
  with pytest.raises(InputError, match=r"'torch\.nn\.modules\.linear\.Linear'.*state_dict\(\)"):
    load_torch_state_dict(tmp_path / "model.bin")


class _Storage:
  """Pickled by _TorchLikePickler as torch pickles a FloatStorage."""


class _Tensor:
  def __init__(self, offset, size, stride, storage=None):
    self.args, self.storage = (offset, size, stride), storage


class _TorchLikePickler(pickle.Pickler):
  """Writes the exact opcodes torch.save does for float32 tensors, with chosen offset/size/stride."""

  def __init__(self, file, numel):
    super().__init__(file, protocol=2)
    self.numel, self.storage = numel, _Storage()

  def persistent_id(self, obj):
    return ("storage", torch.FloatStorage, "0", "cpu", self.numel) if isinstance(obj, _Storage) else None

  def reducer_override(self, obj):
    if isinstance(obj, _Tensor):
      storage = self.storage if obj.storage is None else obj.storage
      return torch._utils._rebuild_tensor_v2, (storage, *obj.args, False, collections.OrderedDict())  # pylint: disable=protected-access
    return NotImplemented


def _torch_like(tensors: dict, numel: int) -> bytes:
  buf = io.BytesIO()
  _TorchLikePickler(buf, numel).dump(collections.OrderedDict(tensors))
  return buf.getvalue()


def test_hand_made_archive_reads_and_bounds_are_checked(tmp_path):
  data = np.arange(12, dtype=np.float32)
  path = tmp_path / "x.bin"
  _write_archive(path, _torch_like({"v": _Tensor(2, (3, 2), (1, 4))}, 12), {"0": data.tobytes()})
  np.testing.assert_array_equal(load_torch_state_dict(path)["v"], [[2, 6], [3, 7], [4, 8]])
  for offset, size, stride in [(0, (4, 4), (4, 1)), (11, (2,), (1,)), (-1, (2,), (1,)), (0, (2, 2), (-1, 1))]:
    _write_archive(path, _torch_like({"v": _Tensor(offset, size, stride)}, 12), {"0": data.tobytes()})
    with pytest.raises(InputError, match="tensor"):
      load_torch_state_dict(path)
  _write_archive(path, _torch_like({"v": _Tensor(0, (2,), (1,), storage=7)}, 12), {"0": data.tobytes()})
  with pytest.raises(InputError, match="malformed tensor in data.pkl: storage 7"):
    load_torch_state_dict(path)


def test_missing_or_short_storage_record(tmp_path):
  path = tmp_path / "x.bin"
  _write_archive(path, _torch_like({"v": _Tensor(0, (3,), (1,))}, 3), {})
  with pytest.raises(InputError, match=r"storage '0'.*no record 'archive/data/0'"):
    load_torch_state_dict(path)
  _write_archive(path, _torch_like({"v": _Tensor(0, (3,), (1,))}, 3), {"0": b"\0" * 8})
  with pytest.raises(InputError, match="holds 8 bytes"):
    load_torch_state_dict(path)


def test_bad_byteorder_record(tmp_path):
  path = tmp_path / "x.bin"
  _write_archive(path, _torch_like({"v": _Tensor(0, (1,), (1,))}, 1), {"0": b"\0" * 4}, byteorder=b"middle")
  with pytest.raises(InputError, match="byteorder"):
    load_torch_state_dict(path)


def test_not_a_checkpoint(tmp_path):
  with pytest.raises(InputError, match="no such file"):
    load_torch_state_dict(tmp_path / "absent.bin")
  (tmp_path / "garbage.bin").write_bytes(os.urandom(1000))
  with pytest.raises(InputError, match="not a PyTorch checkpoint") as e:
    load_torch_state_dict(tmp_path / "garbage.bin")
  assert "garbage.bin" in str(e.value)
  torch.save({"w": torch.ones(2)}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
  with pytest.raises(InputError, match=r"legacy \(pre-1\.6\)"):
    load_torch_state_dict(tmp_path / "legacy.bin")
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
    z.writestr("archive/readme.txt", b"hi")
  with pytest.raises(InputError, match="no data.pkl"):
    load_torch_state_dict(tmp_path / "other.zip")


def test_wrapped_state_dict_is_unwrapped(tmp_path):
  sd = torch.nn.Linear(3, 2).state_dict()
  for wrapper in ({"state_dict": sd, "epoch": 3}, {"model": sd, "optimizer": {"lr": 0.1}}):
    torch.save(wrapper, tmp_path / "w.bin")
    _assert_same(load_torch_state_dict(tmp_path / "w.bin"), sd)


@pytest.mark.parametrize("obj, message", [
    ({"weight": torch.ones(2), "epoch": 3}, r"entries \['epoch'\] are not tensors"),
    ({"state_dict": {"w": torch.ones(1)}, "model": {"w": torch.ones(1)}}, "not tensors"),
    ([torch.ones(2)], "found a list"),
])
def test_not_a_state_dict(tmp_path, obj, message):
  torch.save(obj, tmp_path / "x.bin")
  with pytest.raises(InputError, match=message):
    load_torch_state_dict(tmp_path / "x.bin")
