"""Sentence embeddings: any BERT checkpoint (or a fine-tuning workdir) → L2-normalised vectors.

`Embedder(path, pooling)` reads a flaxbert dir/workdir, HF dir or TF1 checkpoint (the encoder
only), or a `flaxbert finetune` workdir (its newest checkpoint's encoder, e.g. a similarity
bi-encoder); `embed(texts)` pools the last hidden states (mean over the mask, or [CLS]).
Sentences are sorted by length and each batch padded to the first of a few widths (16, 32, … 512)
that holds its longest (flaxbert.training.batching.by_length), so a large file compiles at most a
handful of shapes and wastes little on padding; the result is in input order. A fine-tuning workdir of any task family gives the BERT
encoder inside its model (a BERT2BERT model: its encoder).
`flaxbert embed --model PATH --input sentences.txt --output vectors.npy [--pooling mean|cls]`.
"""
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from flaxbert.atomic import atomic_file
from flaxbert.errors import InputError
from flaxbert.finetune.tasks.readers import text_lines
from flaxbert.finetune.tasks.registry import family
from flaxbert.finetune.tasks.similarity import encode_sentences
from flaxbert.finetune.workdir import kind_of, read_record
from flaxbert.interop.pretrained import load
from flaxbert.interop.tensors import check_weights
from flaxbert.models.config import BertConfig
from flaxbert.models.task_heads import BertForTask
from flaxbert.text.tokenization import load_tokenizer
from flaxbert.training import batching, checkpoint

WIDTHS = (16, 32, 64, 128, 256, 512)  # a batch is cut to the first of these that holds its longest sentence


def _finetuned_encoder(workdir: Path) -> tuple[BertConfig, dict]:
  """A fine-tuning workdir's encoder: the BERT inside whatever model its task family trained."""
  record = read_record(workdir)
  step, params = checkpoint.restore_params(workdir, None)
  bert = check_weights(family(record["kind"]).encoder_params(params), f"{workdir} (checkpoint step {step})")
  return BertConfig.from_dict(record["model"]), bert


class Embedder:
  def __init__(self, path: str | Path, pooling: str = "mean", max_seq_length: int = 128,
               batch_size: int = 64, lower_case: bool | None = None):
    path = Path(path)
    if max_seq_length < 3:
      raise InputError(f"max_seq_length: expected at least 3 ([CLS], a token, [SEP]), got {max_seq_length}")
    if batch_size < 1:
      raise InputError(f"batch_size: expected a positive integer, got {batch_size}")
    if kind_of(path) is not None:
      cfg, bert = _finetuned_encoder(path)
      vocab_dir = path
    else:
      loaded = load(path)
      cfg, bert, vocab_dir = loaded.config, loaded.params["bert"], loaded.vocab or path
    self.tokenizer = load_tokenizer(vocab_dir, lower_case=lower_case)
    self.max_seq_length = min(max_seq_length, cfg.max_position_embeddings)
    self.batch_size = batch_size
    self.model = BertForTask(cfg.replace(param_dtype="float32"), "embedding", pooling=pooling)
    bert = {k: v for k, v in bert.items() if k != "pooler"}
    self.params = jax.device_put({"bert": bert})
    self._apply = jax.jit(lambda p, b: self.model.apply({"params": p}, b)["embedding"])

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """[N, hidden] float32, each row of unit length, in the order of `texts`."""
    if not texts:
      return np.zeros((0, self.model.config.hidden_size), np.float32)
    ids, mask = encode_sentences(texts, self.tokenizer, self.max_seq_length)
    out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
    groups = {"input_mask": ("input_ids", "input_mask")}
    for rows, batch in batching.by_length({"input_ids": ids, "input_mask": mask}, mask.sum(1), self.batch_size,
                                          groups, WIDTHS):
      out[rows] = np.asarray(self._apply(self.params, {k: batch[k] for k in groups["input_mask"]}))[:len(rows)]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def read_lines(path: str | Path) -> list[str]:
  path = Path(path)
  if not path.is_file():
    raise InputError(f"{path}: no such file")
  lines = [line.rstrip("\r\n") for line in text_lines(path)]
  for i, line in enumerate(lines, 1):
    if not line.strip():
      raise InputError(f"{path}:{i}: empty line; expected one sentence per line")
  if not lines:
    raise InputError(f"{path}: no sentences")
  return lines


def embed_file(model: str, input_path: str, output: str, pooling: str = "mean", max_seq_length: int = 128,
               batch_size: int = 64) -> np.ndarray:
  """Embeds every line of `input_path` and saves [N, hidden] float32 to `output` (.npy), atomically."""
  vectors = Embedder(model, pooling, max_seq_length, batch_size).embed(read_lines(input_path))
  with atomic_file(output) as tmp:
    with open(tmp, "wb") as f:
      np.save(f, vectors)
  return vectors
