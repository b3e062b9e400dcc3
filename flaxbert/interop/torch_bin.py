"""Reads a PyTorch `pytorch_model.bin` state dict without torch and without running pickled code.

torch.save (torch >= 1.6) writes a zip archive: `<archive>/data.pkl` pickles the state dict,
`<archive>/data/<key>` holds each storage's raw bytes, `<archive>/byteorder` says "little" or
"big" (absent in old files: little). data.pkl is read by an Unpickler whose `find_class` resolves
only the globals that torch.save writes for a dict of dense tensors (checked with pickletools on
torch 2.13 output): `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
`torch._utils._rebuild_parameter[_with_state]`, the typed storage classes (`torch.FloatStorage`,
`torch.BFloat16Storage`, ...) and, for the dtypes torch stores untyped (uint16/32/64, float8),
`torch._utils._rebuild_tensor_v3`, `torch.storage.UntypedStorage` and the dtype (`torch.uint16`).
Each maps to a local, immutable stand-in; any other global (`posix.system`, `builtins.eval`, a
pickled nn.Module's class) stops the load with an InputError before anything is called.
"""
import _compat_pickle
import collections
import math
import os
import pickle
import sys
import zipfile
from typing import Any, Callable, NamedTuple

import ml_dtypes
import numpy as np

from flaxbert.errors import InputError

# A legacy (pre-1.6) torch.save file starts with pickle protocol 2 and then its magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_STORAGES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16,
             "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32,
             "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
             "BoolStorage": np.bool_}
# Saved as UntypedStorage + a dtype global and rebuilt by _rebuild_tensor_v3.
_V3_DTYPES = {"uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
              "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
              "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz}


class _Dtype(NamedTuple):
  """Stands for a storage class or a torch dtype; a tuple, so a pickle's BUILD cannot alter it."""
  dtype: np.dtype


class _Func(NamedTuple):
  """Stands for a whitelisted function; a tuple, so a pickle's BUILD cannot alter it."""
  fn: Callable[..., Any]

  def __call__(self, *args):
    return self.fn(*args)


class _Storage(NamedTuple):
  """A storage record of the archive, as data.pkl's persistent ids name it."""
  key: str
  dtype: np.dtype


class _Tensor(NamedTuple):
  """A tensor as data.pkl rebuilds it, not yet read: the arguments of torch's `set_`, checked
  (and the array allocated) once the state dict names it (`_Unpickler.array`)."""
  storage: Any
  dtype: Any
  offset: Any
  size: Any
  stride: Any
  metadata: Any


def _rebuild_parameter(data, _requires_grad=None, _backward_hooks=None, _state=None):
  return data  # a Parameter's data is all a state dict needs


class _Unpickler(pickle.Unpickler):
  """Unpickles data.pkl with whitelisted globals; tensors become numpy arrays."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str, swap: bool):
    super().__init__(file)
    self._archive, self._prefix, self._path, self._swap = archive, prefix, path, swap
    self._arrays: dict[tuple[str, type], np.ndarray] = {}
    self._globals: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "torch._utils._rebuild_tensor_v2": _Func(self._rebuild_tensor_v2),
        "torch._utils._rebuild_tensor_v3": _Func(self._rebuild_tensor_v3),
        "torch._utils._rebuild_parameter": _Func(_rebuild_parameter),
        "torch._utils._rebuild_parameter_with_state": _Func(_rebuild_parameter),
        "torch.storage.UntypedStorage": _Dtype(np.dtype(np.uint8)),
        **{f"torch.{k}": _Dtype(np.dtype(v)) for k, v in {**_STORAGES, **_V3_DTYPES}.items()}}

  def find_class(self, module: str, name: str) -> Any:
    # As pickle does for protocols < 3: Python 2 names (`__builtin__.eval`) → Python 3 ones.
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    qualname = f"{module}.{name}"
    if qualname in self._globals:
      return self._globals[qualname]
    if module.split(".")[0] in ("torch", "__torch__"):
      raise InputError(f"{self._path}: unsupported global '{qualname}': only a state dict of dense real "
                       "tensors can be read, not a pickled nn.Module, TorchScript, quantized, sparse or "
                       "complex tensors; save model.state_dict() instead")
    raise InputError(f"{self._path}: refusing to unpickle global '{qualname}': pytorch_model.bin may only "
                     "contain tensors (possible code-execution payload); convert it to safetensors with "
                     "a trusted tool")

  def persistent_load(self, pid: Any) -> _Storage:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _Dtype) and isinstance(pid[2], str) and type(pid[4]) is int):
      raise InputError(f"{self._path}: malformed storage reference {pid!r:.200} in data.pkl")
    _, storage_type, key, _, numel = pid  # pid[3] is the device it was saved from
    record = f"{self._prefix}data/{key}"
    try:
      size = self._archive.getinfo(record).file_size
    except KeyError:
      raise InputError(f"{self._path}: data.pkl refers to storage '{key}' but the archive has no "
                       f"record {record!r}") from None
    if size != numel * storage_type.dtype.itemsize:
      raise InputError(f"{self._path}: storage record {record!r} holds {size} bytes, data.pkl says "
                       f"{numel} × {storage_type.dtype}")
    if size > os.path.getsize(self._path):  # a compressed record that would inflate past the file
      raise InputError(f"{self._path}: storage record {record!r} declares {size} bytes, more than the "
                       f"whole file; torch.save stores storages uncompressed")
    return _Storage(key, storage_type.dtype)

  def _rebuild_tensor_v2(self, storage, offset, size, stride, _requires_grad, _backward_hooks,
                         metadata=None):
    return _Tensor(storage, None, offset, size, stride, metadata)

  def _rebuild_tensor_v3(self, storage, offset, size, stride, _requires_grad, _backward_hooks, dtype,
                         metadata=None):
    return _Tensor(storage, dtype, offset, size, stride, metadata)

  def array(self, name: str, tensor: _Tensor) -> np.ndarray:
    """torch's `empty(0).set_(storage, offset, size, stride)`, C-contiguous, checked before anything
    is allocated: the view must lie inside the storage and hold no more elements than it (a stride-0
    view of a huge size would otherwise allocate far more than the file holds)."""
    storage, dtype, offset, size, stride, metadata = tensor
    where = f"{self._path}: tensor {name!r:.200}"
    if not isinstance(storage, _Storage) or not isinstance(dtype, (_Dtype, type(None))):
      raise InputError(f"{where}: malformed tensor in data.pkl: storage {storage!r:.50}, dtype {dtype!r:.50}")
    dtype = storage.dtype if dtype is None else dtype.dtype  # _v2: the storage's; _v3: its own
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))):
      raise InputError(f"{where}: malformed tensor in data.pkl: size {size!r:.100}, stride {stride!r:.100}")
    size, stride = tuple(size), tuple(stride)
    if (len(size) != len(stride) or type(offset) is not int or offset < 0
        or any(type(n) is not int or n < 0 for n in size + stride)):
      raise InputError(f"{where}: malformed tensor in data.pkl: offset {offset!r:.50}, "
                       f"size {size!r:.100}, stride {stride!r:.100}")
    data = self._array(storage.key, dtype)
    numel = math.prod(size)
    if numel == 0:
      return np.zeros(size, dtype)
    if numel > data.size:
      raise InputError(f"{where}: size {size!r:.100} (stride {stride!r:.100}) is {numel} elements, but its "
                       f"storage '{storage.key}' holds only {data.size} × {dtype}; refusing to expand it")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
      raise InputError(f"{where}: size {size!r:.100} (offset {offset}, stride {stride!r:.100}) runs "
                       f"past the end of storage '{storage.key}' ({data.size} × {dtype})")
    # Strided through unsigned ints: as_strided cannot rebuild ml_dtypes' float8 from its typestr.
    bits = data[offset:].view(f"u{dtype.itemsize}")
    out = np.asarray(np.lib.stride_tricks.as_strided(bits, size, [s * dtype.itemsize for s in stride]),
                     order="C").view(dtype)
    if isinstance(metadata, dict) and metadata.get("neg"):  # torch._neg_view: data holds -value
      out = np.negative(out)
    return out

  def _array(self, key: str, dtype: np.dtype) -> np.ndarray:
    """Storage `key` as a native-byte-order array of `dtype`, read once per dtype."""
    if (key, dtype.type) not in self._arrays:
      raw = self._archive.read(f"{self._prefix}data/{key}")
      if len(raw) % dtype.itemsize:
        raise InputError(f"{self._path}: storage '{key}' ({len(raw)} bytes) is not a whole number "
                         f"of {dtype}")
      data = np.frombuffer(bytearray(raw), dtype)
      if self._swap and dtype.itemsize > 1:
        data = data.view(f"u{dtype.itemsize}").byteswap().view(dtype)
      self._arrays[key, dtype.type] = data
    return self._arrays[key, dtype.type]


def _is_tensor_dict(obj: Any) -> bool:
  return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, _Tensor) for k, v in obj.items())


def _state_dict(obj: Any, path: str) -> dict[str, _Tensor]:
  """The dict of tensors itself, or the one under a lone 'state_dict' / 'model' key."""
  if _is_tensor_dict(obj):
    return dict(obj)
  if not isinstance(obj, dict):
    raise InputError(f"{path}: expected a state dict (tensor name → tensor), found a {'tensor' if isinstance(obj, _Tensor) else type(obj).__name__}")
  inner = [obj[k] for k in ("state_dict", "model") if _is_tensor_dict(obj.get(k))]
  if len(inner) == 1:
    return dict(inner[0])
  others = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, _Tensor))]
  raise InputError(f"{path}: expected a state dict (tensor name → tensor), found a dict whose entries "
                   f"{others[:5]!r:.300} are not tensors, nor is one 'state_dict'/'model' entry a state dict")


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{name: array} of the state dict that torch.save wrote to `path`; never runs pickled code."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such file")
  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      if f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC:
        raise InputError(f"{path}: legacy (pre-1.6) torch.save format, which is not read; re-save it "
                         "with torch >= 1.6 or convert it to safetensors with a trusted tool")
    raise InputError(f"{path}: not a PyTorch checkpoint: expected the zip archive that torch.save "
                     "writes (torch >= 1.6)")
  try:
    with zipfile.ZipFile(path) as archive:
      pkls = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
      if len(pkls) != 1:
        raise InputError(f"{path}: a zip archive with {len(pkls) or 'no'} data.pkl records, not one "
                         "torch.save checkpoint")
      prefix = pkls[0][:-len("data.pkl")]
      has_order = prefix + "byteorder" in archive.namelist()
      order = archive.read(prefix + "byteorder").decode("ascii", "replace") if has_order else "little"
      if order not in ("little", "big"):
        raise InputError(f"{path}: byteorder record says {order!r:.20}, expected 'little' or 'big'")
      with archive.open(pkls[0]) as f:
        unpickler = _Unpickler(f, archive, prefix, path, swap=order != sys.byteorder)
        obj = unpickler.load()
      return {name: unpickler.array(name, t) for name, t in _state_dict(obj, path).items()}
  except InputError:
    raise
  except zipfile.BadZipFile as e:
    raise InputError(f"{path}: corrupt zip archive ({e})") from e
  except (pickle.UnpicklingError, EOFError, AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
    raise InputError(f"{path}: corrupt or non-tensor data.pkl ({type(e).__name__}: {e})") from e
