"""`--config NAME[:ARG]` or `--config FILE.py[:ARG]`, and `--config.key=value`, for the `flaxbert` subcommands.

A config file is a Python module with `get_config(arg) -> ml_collections.ConfigDict`, as in
the Flax examples and big_vision. The packaged ones go by name from any directory (`pretrain:base`,
`finetune:glue_mrpc`, `prepare:dynamic`: the files of the installed `configs` package); anything
with a "/" or a ".py" is a file path. Overrides are typed by the field they replace: an int field
takes only an int, a tuple field a comma-separated list or a Python literal (nested tuples, such
as sharding rules, only the literal), a bool field true/false; a placeholder field (declared with
a type, value None) is parsed as its declared type, or `none` leaves it None. `sharding_rules` also
takes a preset's name (flaxbert.training.sharding.PRESETS: data_parallel, fsdp, tensor_parallel).
An unknown key or a badly typed value is an error that names the key, the value and the type
expected; a key a config module lists in its RENAMED (an earlier version's spelling) names the
new one.
"""
import ast
import importlib.util
import os
from pathlib import Path

import ml_collections

from flaxbert.errors import InputError

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_NONE = ("none", "null")
# The packaged configs: the `configs` package installed beside `flaxbert`.
PACKAGED = Path(__file__).resolve().parent.parent / "configs"


def packaged_names() -> list[str]:
  return sorted(p.stem for p in PACKAGED.glob("*.py") if not p.stem.startswith("_") and p.stem != "common")


def resolve(spec: str) -> tuple[Path, str]:
  """(the config file, its argument) of a --config value: a packaged name or a file path."""
  path, _, arg = spec.partition(":")
  if "/" not in path and os.sep not in path and not path.endswith(".py"):
    if path not in packaged_names():
      raise InputError(f"--config {spec}: no packaged config {path!r}; expected one of {packaged_names()} "
                       "(e.g. --config pretrain:base) or a file PATH.py[:ARG]")
    return PACKAGED / f"{path}.py", arg
  if not os.path.isfile(path):
    hint = ""
    if Path(path).stem in packaged_names():
      hint = f"; the packaged one is --config {Path(path).stem}{':' + arg if arg else ''}"
    raise InputError(f"--config {spec}: no such file {path!r}{hint}")
  return Path(path), arg


def load_config(spec: str) -> tuple[ml_collections.ConfigDict, dict[str, str]]:
  """(get_config(arg) of the config named by `spec`, the module's RENAMED fields: old → new)."""
  path, arg = resolve(spec)
  module_spec = importlib.util.spec_from_file_location(f"_flaxbert_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise InputError(f"--config {spec}: {path} defines no get_config()")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ValueError as e:  # the config files' own "unknown argument/task/variant" errors
    raise InputError(f"--config {spec}: {e}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError(f"--config {spec}: get_config must return an ml_collections.ConfigDict")
  return config, dict(getattr(module, "RENAMED", {}))


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str],
                    renamed: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """Applies `key.sub=value` strings (the part after `--config.`) in order; returns the config."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise InputError(f"--config.{item}: expected --config.KEY=VALUE")
    parent, name = _parent(config, key, raw, renamed or {})
    nullable = isinstance(dict(parent.items(preserve_field_references=True))[name], ml_collections.FieldReference)
    try:
      if nullable and raw.lower() in _NONE:  # a placeholder field (declared with a type) may be cleared
        parent[name] = None
        continue
      parent[name] = parse_value(key, raw, parent[name], parent.get_type(name))
    except TypeError as e:  # ml_collections' own type check (placeholders declared with a type)
      raise InputError(f"--config.{item}: {e}") from None
  return config


def _parent(config: ml_collections.ConfigDict, key: str, raw: str, renamed: dict[str, str]):
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      old = ".".join(parts[:i + 1])
      if old in renamed:
        new = renamed[old]
        raise InputError(f"--config.{key}={raw}: {old} is now {new} (--config.{new.split(' and ')[0]}={raw})")
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise InputError(f"--config.{key}: unknown key {'.'.join(parts[:i + 1])!r}; known here: {known}")
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def parse_value(key: str, raw: str, current, declared: type | None = None):
  """`raw` parsed as the type of `current` (the field's present value), or as `declared` (the
  field's declared type) when a placeholder holds None."""
  def fail(expected: str):
    raise InputError(f"--config.{key}={raw}: expected {expected}")
  if current is None and declared in (bool, int, float, str):
    return None if raw.lower() in _NONE else parse_value(key, raw, declared())
  if isinstance(current, bool):
    if raw.lower() in _TRUE:
      return True
    if raw.lower() in _FALSE:
      return False
    fail("a bool (true/false)")
  if isinstance(current, int):
    try:
      return int(raw)
    except ValueError:
      fail("an integer")
  if isinstance(current, float):
    try:
      return float(raw)
    except ValueError:
      fail("a number")
  if isinstance(current, tuple):
    if raw.lstrip().startswith(("(", "[")):
      return _literal_tuple(key, raw)
    if key.split(".")[-1] == "sharding_rules":
      from flaxbert.training.sharding import PRESETS  # pylint: disable=import-outside-toplevel
      if raw.lower() in PRESETS:
        return PRESETS[raw.lower()]
      fail(f"a preset ({', '.join(PRESETS)}) or a Python literal of (logical_axis, mesh_axes) pairs")
    if current and isinstance(current[0], (tuple, list)):
      fail("a Python literal of tuples, e.g. '((\"a\", 1), (\"b\", 2))'")
    items = [x.strip() for x in raw.split(",") if x.strip()]
    if current and not isinstance(current[0], str):
      return tuple(parse_value(key, x, current[0]) for x in items)
    return tuple(items)
  if isinstance(current, ml_collections.ConfigDict):
    fail(f"one of its fields, e.g. --config.{key}.{next(iter(current.keys()), 'x')}=…")
  if current is None:
    if raw.lower() in _NONE:
      return None
    try:
      return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      return raw
  return raw


def _literal_tuple(key: str, raw: str) -> tuple:
  """A Python literal of (nested) tuples or lists, as nested tuples."""
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError) as e:
    raise InputError(f"--config.{key}={raw}: not a Python literal ({e.__class__.__name__}: {e})") from None
  if not isinstance(value, (tuple, list)):
    raise InputError(f"--config.{key}={raw}: expected a tuple, got {type(value).__name__}")

  def as_tuple(x):
    return tuple(as_tuple(v) for v in x) if isinstance(x, (tuple, list)) else x
  return as_tuple(value)
