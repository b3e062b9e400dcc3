"""What training, evaluation and generation of a seq2seq job share: the `Seq2Seq` bundle (model,
tokenizer, mesh, lengths) that turns texts into padded source rows and parallel examples into
training arrays (`[CLS] x [SEP]` sources, `[CLS] y` decoder inputs, `y [SEP]` labels), and decodes
texts with beam search, longest first, back in input order."""
import dataclasses
import logging
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from flaxbert.errors import InputError
from flaxbert.finetune.tasks import parallel
from flaxbert.finetune.tasks.readers import ReadReport
from flaxbert.models.encoder_decoder import BertEncoderDecoder, generate
from flaxbert.text.tokenization import Tokenizer
from flaxbert.training import batching, sharding

log = logging.getLogger("flaxbert")
SOURCE_KEYS = ("source_ids", "source_mask")
GROUPS = {"source_mask": SOURCE_KEYS, "target_mask": ("target_ids", "target_mask", "labels")}


@dataclasses.dataclass
class Seq2Seq:
  """What training, evaluation and generation share: the model, tokenizer, mesh and lengths."""
  model: BertEncoderDecoder
  tokenizer: Tokenizer
  mesh: jax.sharding.Mesh
  max_source_length: int
  max_target_length: int

  def sources(self, texts: Sequence[str], report: ReadReport | None = None) -> dict[str, np.ndarray]:
    """[CLS] x [SEP] rows, padded; a source over the limit is cut (with a warning naming report.path)."""
    room = self.max_source_length - 2
    ids = self.tokenizer.encode_batch(texts)
    if report is not None and any(len(x) > room for x in ids):
      cut = sum(len(x) > room for x in ids)
      log.warning("%s: %d source(s) over %d wordpieces cut to fit max_source_length=%d", report.path, cut, room,
                  self.max_source_length)
    t = self.tokenizer
    source_ids, source_mask = _padded([[t.cls_id, *x[:room], t.sep_id] for x in ids], self.max_source_length, t.pad_id)
    return {"source_ids": source_ids, "source_mask": source_mask}

  def pairs(self, examples: Sequence[parallel.ParallelExample], report: ReadReport,
            cut_long_sources: bool = False) -> dict[str, np.ndarray]:
    """Training arrays; pairs whose target (and, unless `cut_long_sources`, source) does not fit
    are skipped and counted; with `cut_long_sources` a long source is cut (with a warning)."""
    t = self.tokenizer
    texts = sorted({e.source for e in examples} | {e.target for e in examples})
    ids = dict(zip(texts, t.encode_batch(texts)))
    kept = parallel.filter_lengths(examples, ids.__getitem__, None if cut_long_sources else self.max_source_length - 2,
                                   self.max_target_length - 1, report)
    if report.skipped:
      log.warning("%s: %d training pair(s) skipped: %s", report.path, report.skipped, report.reasons)
    if not kept:
      raise InputError(f"{report.path}: no training pair fits max_source_length={self.max_source_length} and "
                       f"max_target_length={self.max_target_length} ({report.reasons})")
    arrays = self.sources([e.source for e in kept], report)
    targets = [ids[e.target] for e in kept]
    arrays["target_ids"], arrays["target_mask"] = _padded([[t.cls_id, *y] for y in targets], self.max_target_length,
                                                          t.pad_id)
    arrays["labels"], _ = _padded([[*y, t.sep_id] for y in targets], self.max_target_length, t.pad_id)
    return arrays

  def generate(self, params, texts: Sequence[str], batch_size: int, beam_size: int, length_penalty: float,
               report: ReadReport | None = None, bucket: int = 16) -> list[str]:
    """Detokenized outputs for `texts`, in order; every text decoded once (the last batch padded);
    sources are batched by length and padded to a multiple of `bucket` (0: max_source_length)."""
    arrays, t = self.sources(texts, report), self.tokenizer
    out = [""] * len(texts)
    # longest first, so that a batch's beams finish together and its padding is short
    for rows, batch in batching.by_length(arrays, arrays["source_mask"].sum(axis=1), batch_size,
                                          {"source_mask": SOURCE_KEYS}, bucket):
      batch = batching.local_slice(batch, jax.process_index(), jax.process_count())
      inputs = sharding.global_batch({k: batch[k] for k in SOURCE_KEYS}, self.mesh)
      best = generate(self.model, params, inputs["source_ids"], inputs["source_mask"],
                      max_length=self.max_target_length, start_id=t.cls_id, eos_id=t.sep_id,
                      pad_id=t.pad_id, beam_size=beam_size, length_penalty=float(length_penalty)).sequences
      best = best if beam_size == 1 else best[:, 0]
      if jax.process_count() > 1:
        best = multihost_utils.process_allgather(best, tiled=True)
      for i, row in zip(rows, np.asarray(best)):
        out[i] = t.decode(_until_eos(row, t.sep_id))
    return out


def _padded(rows: list[list[int]], length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids, mask) [N, length]: each row left-aligned, `pad` after it."""
  ids = np.full((len(rows), length), pad, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  return ids, mask


def _until_eos(row: np.ndarray, eos: int) -> list[int]:
  row = [int(x) for x in row]
  return row[:row.index(eos)] if eos in row else row
