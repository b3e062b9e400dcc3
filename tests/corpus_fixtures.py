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


def prepare_tiny(tmp: Path) -> Path:
  """A prepared tiny pretraining dataset (configs/prepare.py:tiny on a generated corpus) under `tmp`."""
  from configs import prepare as prepare_config  # pylint: disable=import-outside-toplevel
  from data_prep.builder import prepare  # pylint: disable=import-outside-toplevel
  c = prepare_config.get_config("tiny")
  c.input = (str(write_corpus(tmp / "corpus", num_files=4)),)
  c.vocab = str(write_vocab(tmp / "vocab.txt"))
  c.output_dir = str(tmp / "data")
  c.validation_fraction = 0.2
  return prepare(c)[0]


def tiny_pretrain_config(dataset, **overrides):
  """configs/pretrain.py:tiny on `dataset`: 6 steps of 16 sequences, checkpoints at 3 and 6."""
  from configs import pretrain as pretrain_config  # pylint: disable=import-outside-toplevel
  c = pretrain_config.get_config("tiny")
  c.dataset_dir = str(dataset)
  c.global_batch_size = 16
  c.num_train_steps = 6
  c.log_every_steps = 2
  c.checkpoint.every_steps = 3
  c.eval_every_steps = 0
  c.eval_max_batches = 2
  c.optim.warmup_steps = 2
  c.optim.learning_rate = 1e-3
  return override(c, overrides)


def final_params(workdir):
  """The parameters of a workdir's newest checkpoint (or of any model folder)."""
  from flaxbert.interop.pretrained import load  # pylint: disable=import-outside-toplevel
  return load(workdir).params


def assert_params_equal(a, b):
  """Bit-equal parameter trees, naming the first leaf that differs."""
  import jax  # pylint: disable=import-outside-toplevel
  for (path, x), (_, y) in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)
