"""A fast tf.train.Example encoder for fixed-shape int/float features.

TFDS's serializer builds a protobuf message per example (~150 µs each here); pretraining
datasets have millions of examples of a handful of fixed-length int vectors, so this module
writes the same wire format directly (small varints from a table), without TensorFlow. The output
is an ordinary serialized `tf.train.Example` that TFDS (and `tf.io.parse_example`) decode; a
test checks it against TFDS's own decoder.

Wire format (proto3): Example{1: Features{1: repeated MapEntry{1: key, 2: Feature}}};
Feature{2: FloatList{1: packed float32} | 3: Int64List{1: packed varint}}.
"""
import operator

import numpy as np

def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


_TAGS = {number: bytes([number << 3 | 2]) for number in (1, 2, 3)}  # length-delimited field tags


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2)."""
  n = len(payload)
  return _TAGS[number] + (_small_varints()[n] if n < _SMALL else _varint(n)) + payload


def _packed_varints(values: np.ndarray) -> bytes:
  """Varint encoding of int64 values (negatives as 10-byte two's complement)."""
  values = np.asarray(values, np.int64).reshape(-1)
  if values.size == 0:
    return b""
  if values.min() >= 0 and values.max() < _SMALL:
    return b"".join(operator.itemgetter(*values.tolist())(_small_varints())) if values.size > 1 else \
        _small_varints()[int(values[0])]
  return b"".join(_varint(v & 0xFFFFFFFFFFFFFFFF) for v in values.tolist())


_SMALL = 1 << 16
_SMALL_TABLE: list[bytes] = []


def _small_varints() -> list[bytes]:
  """Encodings of 0…65535 (token ids, positions, masks, labels), built once per process."""
  if not _SMALL_TABLE:
    _SMALL_TABLE.extend(_varint(i) for i in range(_SMALL))
  return _SMALL_TABLE


class ExampleEncoder:
  """Encodes dicts of fixed-dtype arrays as serialized tf.train.Example bytes.

  `specs` maps feature name → "int" | "float"; keys are written in sorted order (any order
  decodes the same).
  """

  def __init__(self, specs: dict[str, str]):
    for name, kind in specs.items():
      if kind not in ("int", "float"):
        raise ValueError(f"feature {name!r}: kind must be 'int' or 'float', got {kind!r}")
    self._specs = dict(sorted(specs.items()))
    self._keys = {name: _field(1, name.encode("utf-8")) for name in self._specs}

  def encode(self, example: dict[str, np.ndarray]) -> bytes:
    entries = []
    for name, kind in self._specs.items():
      value = np.asarray(example[name])
      if kind == "int":
        feature = _field(3, _field(1, _packed_varints(value)))
      else:
        feature = _field(2, _field(1, value.astype("<f4", copy=False).tobytes()))
      entries.append(_field(1, self._keys[name] + _field(2, feature)))
    return _field(1, b"".join(entries))

  def encode_batch(self, arrays: dict[str, np.ndarray]) -> list[bytes]:
    """`encode` for every row of [N, ...] arrays at once: varints are computed with numpy over the
    whole batch, leaving a few joins per example in Python."""
    n = len(next(iter(arrays.values())))
    columns = []  # per feature: each row's complete map entry
    for name, kind in self._specs.items():
      value = np.asarray(arrays[name]).reshape(n, -1)
      payloads = _varint_rows(value) if kind == "int" else [r.tobytes() for r in value.astype("<f4")]
      columns.append([_entry(self._keys[name], 3 if kind == "int" else 2, p) for p in payloads])
    return [_field(1, b"".join(parts)) for parts in zip(*columns)]


def _entry(key_field: bytes, feature_field: int, payload: bytes) -> bytes:
  """MapEntry{1: key, 2: Feature{feature_field: List{1: payload}}}, joined once."""
  small = _small_varints()
  n1 = len(payload)
  list_len = 1 + len(small[n1]) + n1 if n1 < _SMALL else len(_field(1, payload))
  feature_len = 1 + len(small[list_len]) + list_len if list_len < _SMALL else len(_field(1, b"x" * list_len))
  entry_len = len(key_field) + 1 + len(small[feature_len]) + feature_len if feature_len < _SMALL else None
  if entry_len is None or entry_len >= _SMALL or n1 >= _SMALL:  # very long rows: the plain way
    return _field(1, key_field + _field(2, _field(feature_field, _field(1, payload))))
  return b"".join((b"\x0a", small[entry_len], key_field, b"\x12", small[feature_len], _TAGS[feature_field],
                   small[list_len], b"\x0a", small[n1], payload))


def _varint_table() -> tuple[np.ndarray, np.ndarray]:
  """Varint bytes of 0…65535 as a [65536, 3] array, and their lengths (1 to 3)."""
  if not _TABLE:
    codes = _small_varints()
    table = np.zeros((_SMALL, 3), np.uint8)
    for i, code in enumerate(codes):
      table[i, :len(code)] = list(code)
    _TABLE.extend([table, np.fromiter(map(len, codes), np.int64, _SMALL)])
  return _TABLE[0], _TABLE[1]


_TABLE: list[np.ndarray] = []


def _varint_rows(values: np.ndarray) -> list[bytes]:
  """Varint encodings of each row of a [n, k] int array (table lookups and scatters over the whole
  array); arrays with negatives or values past 65535 go row by row through `_packed_varints`."""
  v = np.asarray(values)
  if v.size and (v.min() < 0 or v.max() >= _SMALL):
    return [_packed_varints(row) for row in v]
  table, lengths = _varint_table()
  index = v.reshape(-1).astype(np.intp)
  size = lengths[index]
  start = np.cumsum(size) - size
  out = np.empty(int(size.sum()), np.uint8)
  out[start] = table[index, 0]
  for byte in (1, 2):
    more = size > byte
    out[start[more] + byte] = table[index[more], byte]
  row_size = size.reshape(v.shape).sum(axis=1)
  ends = np.cumsum(row_size)
  flat = out.tobytes()
  return [flat[a:b] for a, b in zip((ends - row_size).tolist(), ends.tolist())]
