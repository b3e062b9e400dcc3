"""A generated corpus and matching WordPiece vocabulary for data tests (no files from ../shared)."""
from pathlib import Path

import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
STEMS = [f"w{i}" for i in range(120)]
SUFFIXES = ["##s", "##ing", "##ed"]


def write_vocab(path: Path) -> Path:
  path.write_text("\n".join(SPECIALS + [".", ","] + STEMS + SUFFIXES) + "\n")
  return path


def sentence(rng: np.random.RandomState) -> str:
  words = [STEMS[rng.randint(len(STEMS))] + (["", "s", "ing", "ed"][rng.randint(4)] if rng.rand() < 0.3 else "")
           for _ in range(rng.randint(3, 14))]
  return " ".join(words) + "."


def write_corpus(directory: Path, num_files: int = 3, docs_per_file: int = 8, seed: int = 0) -> Path:
  """Files in the original format: one sentence per line, blank lines between documents."""
  rng = np.random.RandomState(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for f in range(num_files):
    docs = ["\n".join(sentence(rng) for _ in range(rng.randint(1, 25))) for _ in range(docs_per_file)]
    (directory / f"part-{f}.txt").write_text("\n\n".join(docs) + "\n")
  return directory


def override(config, fields: dict):
  """Sets config fields by dotted name ("optim.learning_rate": …); returns the config."""
  for key, value in fields.items():
    node = config
    *parents, name = key.split(".")
    for p in parents:
      node = node[p]
    node[name] = value
  return config
