"""The import direction the layout promises: models ← training ← interop ← jobs ← command line, and no
library module reading configs/ (configs are read by the command line and passed in)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each group of modules and the groups it may import (its own always).
ALLOWED = {
    "base": set(),
    "text": {"base"},
    "models": {"base"},
    "training": {"base", "models"},
    "data_prep": {"base", "text"},
    "interop": {"base", "text", "models", "training"},
    "pretrain": {"base", "text", "models", "training", "interop", "data_prep"},
    "finetune": {"base", "text", "models", "training", "interop", "data_prep"},
    "entry": {"base", "text", "models", "training", "interop", "data_prep", "pretrain", "finetune"},
}


def group(module: str) -> str | None:
  """The group of a flaxbert/data_prep/configs module; None for third-party modules."""
  parts = module.split(".")
  if parts[0] == "configs":
    return "configs"
  if parts[0] == "data_prep":
    return "data_prep"
  if parts[0] != "flaxbert":
    return None
  if module == "flaxbert" or parts[1] in ("cli", "config_flags", "demo", "launch"):
    return "entry"
  if parts[1] in ("errors", "atomic", "storage"):
    return "base"
  return parts[1]


def imports(source: str, module: str) -> set[str]:
  """Every module `source` imports (at the top or inside functions), as absolute names."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: resolve against the importing module's package
        base = ".".join(module.split(".")[:-node.level] + ([base] if base else []))
      folder = ROOT.joinpath(*base.split("."))
      submodules = {a.name for a in node.names if (folder / f"{a.name}.py").is_file() or (folder / a.name).is_dir()}
      if len(submodules) < len(node.names):  # names defined in `base` itself
        found.add(base)
      found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
  return found


def violations(module: str, source: str) -> list[str]:
  mine = group(module)
  bad = []
  for name in sorted(imports(source, module)):
    theirs = group(name)
    if theirs is None or theirs == mine:
      continue
    if theirs == "configs" or theirs not in ALLOWED[mine]:
      bad.append(f"{module} ({mine}) imports {name} ({theirs})")
  return bad


def library_modules():
  for package in ("flaxbert", "data_prep"):
    for path in sorted((ROOT / package).rglob("*.py")):
      parts = path.relative_to(ROOT).with_suffix("").parts
      yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def test_every_module_is_in_a_known_group():
  unknown = [m for m, _ in library_modules() if group(m) not in ALLOWED]
  assert not unknown, unknown


def test_imports_point_one_way_and_no_library_module_reads_configs():
  bad = [v for module, path in library_modules() for v in violations(module, path.read_text())]
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module, source", [
    ("flaxbert.models.encoder", "from flaxbert.training import optim\n"),
    ("flaxbert.models.encoder", "def f():\n  import flaxbert.training.state\n"),
    ("flaxbert.finetune.job", "from configs import finetune\n"),
    ("data_prep.builder", "from configs import prepare\n"),
    ("flaxbert.training.loop", "from flaxbert.pretrain import job\n"),
    ("flaxbert.pretrain.job", "from flaxbert.finetune.tasks import registry\n"),
    ("flaxbert.interop.hf", "from flaxbert import finetune\n"),
])
def test_the_check_catches_a_wrong_import(module, source):
  assert violations(module, source)
