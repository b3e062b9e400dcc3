"""BERT pretraining instances from token ids: google-research/bert's create_pretraining_data algorithm.

Reimplemented on numpy int32 ids; special ids and the vocabulary size are arguments (no tokenizer).
Documents are lists of segments (tokenized sentences); empty ones are dropped, as in the original.
- Documents are shuffled; `dupe_factor` passes go over all of them. Per document and pass (the
  original draws it once per document) the target is randint(2, max_num_tokens) with probability
  short_seq_prob, else max_num_tokens = max_seq_length - 3. Segments are gathered until the target
  is reached or the document ends.
- A = the chunk's first a_end ∈ [1, len(chunk) - 1] segments (1 for one segment). B is random with
  p 0.5, and always for a one-segment chunk: up to 10 draws of another document index (over ALL
  documents), a random start segment, filled to target - len(A) tokens; the chunk's unused segments
  are put back. Else B is the rest of the chunk. Label 1 when B is random. One deviation: in a
  corpus of one document there is no other document, and where the original would take a
  "random" B from the document itself, B is always the rest of the chunk (label 0) and a
  one-segment chunk makes no pair (builds keep that to a split holding a single document:
  `corpus.split_documents` never leaves a document alone in a chunk of a larger split).
- truncate_seq_pair trims the longer side (B on a tie) at the front or back, p 0.5 each, until
  len(A) + len(B) <= max_num_tokens; which side is a function of the lengths, so the front trims
  per side are drawn at once (a binomial: the same distribution). [CLS] A [SEP] B [SEP], segment
  ids 0 then 1, padded with id 0 to max_seq_length.
- Masking (`mask_tokens`): candidates are real tokens but [CLS]/[SEP]; with whole-word masking a
  continuation piece joins the previous candidate (as in the original, even across [SEP]); groups
  are shuffled; num_to_predict = min(max_predictions, max(1, round(len × prob))), Python 3 round
  (half to even); groups are taken while the count stays <= that (one that would exceed it is
  skipped); a taken token becomes [MASK] (p 0.8), stays (0.1) or becomes an id uniform over the
  whole vocabulary (0.1); positions sorted, padded to max_predictions_per_seq. The final list of
  instances is shuffled.
Without next-sentence prediction an instance is [CLS] A [SEP], A the whole chunk (max_num_tokens =
max_seq_length - 2), segment ids 0, label 0.

Randomness is per (seed, pass, document): random.Random for the pair logic, a numpy Generator for
the masking noise, from SeedSequence(seed, spawn_key=(kind, pass, doc)). A document's instances are
a pure function of corpus and config, so chunks of documents go to forked workers (the corpus is
inherited, not copied) with the same result for any number of workers; assembly and masking are
vectorised over a chunk's instances.
"""
import bisect
import dataclasses
import multiprocessing
import random
from typing import Sequence

import numpy as np

from data_prep.masking import _check_ids, _draw_noise, _fields, _is_int, _mask, mask_tokens
from flaxbert.errors import InputError

_DOC_SHUFFLE, _FINAL_SHUFFLE, _PAIR_RNG, _MASK_RNG = range(4)  # SeedSequence spawn-key kinds
_CHUNK_DOCS = 64  # documents per task: enough rows to vectorise over, small enough to balance


@dataclasses.dataclass(frozen=True)
class InstanceConfig:
  """Settings of instance creation (defaults: the original script's flags); validated."""
  max_seq_length: int = 128
  max_predictions_per_seq: int = 20
  masked_lm_prob: float = 0.15
  short_seq_prob: float = 0.1
  dupe_factor: int = 10
  random_next_sentence: bool = True
  whole_word_mask: bool = False
  seed: int = 12345

  def __post_init__(self):
    def need(ok: bool, name: str, expected: str) -> None:
      if not ok:
        raise InputError(f"InstanceConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

    for name, low in (("max_seq_length", 5), ("max_predictions_per_seq", 1), ("dupe_factor", 1),
                      ("seed", 0)):
      need(_is_int(getattr(self, name)) and getattr(self, name) >= low, name, f"an integer >= {low}")
    for name in ("masked_lm_prob", "short_seq_prob"):
      value = getattr(self, name)
      need(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0,
           name, "a number in [0, 1]")
    for name in ("random_next_sentence", "whole_word_mask"):
      need(isinstance(getattr(self, name), bool), name, "a bool")

  @property
  def max_num_tokens(self) -> int:
    """Room for A and B: max_seq_length less [CLS], [SEP] (and the second [SEP] with NSP)."""
    return self.max_seq_length - (3 if self.random_next_sentence else 2)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Documents as flat arrays: a document's segments, a segment's tokens are contiguous ranges."""
  tokens: np.ndarray  # [num_tokens] int32
  segment_bounds: np.ndarray  # [num_segments + 1] int64 token offsets
  document_bounds: np.ndarray  # [num_documents + 1] int64 segment offsets
  document_ids: np.ndarray  # [num_documents] int64: each document's index in the input

  @classmethod
  def from_documents(cls, documents: Sequence[Sequence[np.ndarray]]) -> "Corpus":
    """Flattens documents of segments (1-D integer arrays); drops empty segments and documents."""
    pieces, seg_lens, doc_segs, doc_ids = [], [], [], []
    for d, document in enumerate(documents):
      kept = 0
      for s, segment in enumerate(document):
        segment = np.asarray(segment)
        if segment.ndim != 1 or (segment.size and segment.dtype.kind not in "iu"):
          raise InputError(f"document {d}, segment {s}: expected a 1-D array of integer token ids, "
                           f"got shape {segment.shape} dtype {segment.dtype}")
        if segment.size:
          pieces.append(segment)
          seg_lens.append(segment.size)
          kept += 1
      if kept:
        doc_segs.append(kept)
        doc_ids.append(d)
    if not doc_ids:
      raise InputError("documents: expected at least one non-empty segment, got none")
    tokens = np.concatenate(pieces)
    if tokens.min() < 0 or tokens.max() > np.iinfo(np.int32).max:
      raise InputError(f"documents: expected token ids in [0, 2**31), got [{tokens.min()}, {tokens.max()}]")
    return cls(tokens=tokens.astype(np.int32), segment_bounds=np.concatenate([[0], np.cumsum(seg_lens)]),
               document_bounds=np.concatenate([[0], np.cumsum(doc_segs)]),
               document_ids=np.asarray(doc_ids, np.int64))

  def __post_init__(self):
    seg, doc = np.asarray(self.segment_bounds), np.asarray(self.document_bounds)
    if not (isinstance(self.tokens, np.ndarray) and self.tokens.ndim == 1 and self.tokens.dtype == np.int32
            and seg.ndim == doc.ndim == 1
            and len(seg) >= 2 and seg[0] == 0 and seg[-1] == len(self.tokens) and (np.diff(seg) > 0).all()
            and len(doc) == len(self.document_ids) + 1 >= 2 and doc[0] == 0 and doc[-1] == len(seg) - 1
            and (np.diff(doc) > 0).all()):
      raise InputError("Corpus: expected int32 tokens, non-empty segments and documents, bounds from 0 to "
                       "the number of tokens / segments")

  @property
  def num_documents(self) -> int:
    return len(self.document_ids)


@dataclasses.dataclass
class Pairs:
  """Unmasked sentence pairs, padded: [N, max_seq_length] int32 each, labels and sources [N]."""
  input_ids: np.ndarray
  input_mask: np.ndarray
  segment_ids: np.ndarray
  next_sentence_labels: np.ndarray  # 1 when B is a random sentence
  document: np.ndarray  # index in the input documents of the document A comes from

  def __len__(self) -> int:
    return len(self.input_ids)


@dataclasses.dataclass
class Instances(Pairs):
  """Masked pairs: input_ids carry the replacements; [N, max_predictions_per_seq] targets."""
  masked_lm_positions: np.ndarray  # int32, sorted, 0-padded
  masked_lm_ids: np.ndarray  # int32 original ids, 0-padded
  masked_lm_weights: np.ndarray  # float32 1.0 per prediction, 0.0 padding


def truncate_seq_pair(len_a: int, len_b: int, max_num_tokens: int,
                      rng: random.Random) -> tuple[int, int, int, int]:
  """Tokens trimmed (a_front, a_back, b_front, b_back) so that len_a + len_b <= max_num_tokens.

  Same distribution as the original's loop: trim the longer side (B on a tie), from the front or
  the back with probability 0.5 each.
  """
  excess = len_a + len_b - max_num_tokens
  if excess <= 0:
    return 0, 0, 0, 0
  gap = min(excess, abs(len_a - len_b))  # trims that equalise the lengths, then B, A, B, …
  rest = excess - gap
  trim_a = (gap if len_a > len_b else 0) + rest // 2
  trim_b = (0 if len_a > len_b else gap) + (rest + 1) // 2
  front_a = rng.getrandbits(trim_a).bit_count()
  front_b = rng.getrandbits(trim_b).bit_count()
  return front_a, trim_a - front_a, front_b, trim_b - front_b


def mask_pairs(pairs: Pairs, rng: np.random.Generator, *, masked_lm_prob: float,
               max_predictions_per_seq: int, vocab_size: int, cls_id: int, sep_id: int,
               mask_id: int, continuation: np.ndarray | None = None,
               whole_word_mask: bool = False) -> Instances:
  """Masks stored pairs afresh (RoBERTa-style dynamic masking); `continuation`: [vocab] bool."""
  table = _continuation_table(continuation, vocab_size, whole_word_mask)
  ids = pairs.input_ids
  masked = mask_tokens(ids, None if table is None else table[ids], rng, masked_lm_prob=masked_lm_prob,
                       max_predictions_per_seq=max_predictions_per_seq, vocab_size=vocab_size,
                       mask_id=mask_id, special_mask=(ids == cls_id) | (ids == sep_id),
                       whole_word_mask=whole_word_mask, input_mask=pairs.input_mask)
  return Instances(**{**_fields(pairs), **_fields(masked)})


def _continuation_table(continuation, vocab_size: int, whole_word_mask: bool) -> np.ndarray | None:
  if not whole_word_mask:
    return None
  if continuation is None:
    raise InputError("continuation: expected a [vocab_size] bool table when whole_word_mask is set")
  table = np.asarray(continuation)
  if table.shape != (vocab_size,) or table.dtype != bool:
    raise InputError(f"continuation: expected a bool array of shape ({vocab_size},), "
                     f"got {table.dtype} {table.shape}")
  return table


@dataclasses.dataclass(frozen=True)
class _Job:
  """Everything a worker needs; inherited by forked workers through the module global `_JOB`."""
  corpus: Corpus
  config: InstanceConfig
  seg_lo: np.ndarray  # [D] first segment of each document, in shuffled order
  seg_hi: np.ndarray  # [D] one past its last segment
  source: np.ndarray  # [D] input index of each document, in shuffled order
  vocab_size: int
  cls_id: int
  sep_id: int
  pad_id: int
  mask_id: int | None  # None: pairs only
  continuation: np.ndarray | None


_JOB: _Job | None = None


def _seeds(seed: int, kind: int, dupe_pass: int = 0, doc: int = 0) -> np.random.SeedSequence:
  return np.random.SeedSequence(seed, spawn_key=(kind, dupe_pass, doc))


def _document_pairs(job: _Job, dupe_pass: int, d: int, out: list[int]) -> int:
  """Appends (a_start, a_len, b_start, b_len, label) token ranges of document d's pairs; their count."""
  cfg = job.config
  rng = random.Random(int.from_bytes(_seeds(cfg.seed, _PAIR_RNG, dupe_pass, d).generate_state(4), "little"))
  bounds = job.corpus.segment_bounds
  lo, hi = int(job.seg_lo[d]), int(job.seg_hi[d])
  ends = bounds[lo:hi + 1].tolist()
  n, m, nsp, num_docs = hi - lo, cfg.max_num_tokens, cfg.random_next_sentence, len(job.seg_lo)
  target = m
  if rng.random() < cfg.short_seq_prob:
    target = rng.randint(2, m)
  count, first, i = 0, 0, 0  # `first`: the current chunk's first segment
  while i < n:
    if i == n - 1 or ends[i + 1] - ends[first] >= target:
      size = i + 1 - first
      if not nsp:
        a0, a1, b0, b1, label = ends[first], ends[i + 1], 0, 0, 0
      else:
        a_end = rng.randint(1, size - 1) if size >= 2 else 1
        a0, a1 = ends[first], ends[first + a_end]
        if num_docs == 1 and size == 1:
          # A document alone in its corpus has no other document to draw a random B from (the
          # original takes B from the document itself and labels it random): no pair.
          first, i = i + 1, i + 1
          continue
        if num_docs > 1 and (size == 1 or rng.random() < 0.5):
          label = 1
          for _ in range(10):
            r = rng.randint(0, num_docs - 1)
            if r != d:
              break
          r_lo, r_hi = int(job.seg_lo[r]), int(job.seg_hi[r])
          s = r_lo + rng.randint(0, r_hi - r_lo - 1)
          b0 = int(bounds[s])  # B: segments s, s+1, … until target - len(A) tokens or the end
          b1 = int(bounds[bisect.bisect_left(bounds, b0 + target - (a1 - a0), s + 1, r_hi)])
          i -= size - a_end  # put the chunk's unused segments back
        else:
          label, b0, b1 = 0, a1, ends[i + 1]
      fa, ba, fb, bb = truncate_seq_pair(a1 - a0, b1 - b0, m, rng)
      la, lb = a1 - a0 - fa - ba, b1 - b0 - fb - bb
      assert la >= 1 and (lb >= 1 or not nsp)
      out.extend((a0 + fa, la, b0 + fb, lb, label))
      count += 1
      first = i + 1
    i += 1
  return count


def _assemble(job: _Job, desc: np.ndarray) -> dict[str, np.ndarray]:
  """[CLS] A [SEP] B [SEP] rows (or [CLS] A [SEP]), padded, from token-range descriptors."""
  a0, la, b0, lb, label = (desc[:, k] for k in range(5))
  nsp = job.config.random_next_sentence
  j = np.arange(job.config.max_seq_length)[None, :]
  b_first = (la + 2)[:, None]
  length = la + 2 + (lb + 1 if nsp else 0)
  in_a = (j >= 1) & (j <= la[:, None])
  in_b = (j >= b_first) & (j < b_first + lb[:, None])
  src = np.where(in_a, a0[:, None] + j - 1, np.where(in_b, b0[:, None] + j - b_first, 0))
  real = j < length[:, None]
  ids = np.where(in_a | in_b, job.corpus.tokens[src], job.pad_id).astype(np.int32)
  rows = np.arange(len(desc))
  ids[:, 0] = job.cls_id
  ids[rows, la + 1] = job.sep_id
  if nsp:
    ids[rows, length - 1] = job.sep_id
  return dict(input_ids=ids, input_mask=real.astype(np.int8),  # int8 while in transit: int32 at the end
              segment_ids=((j >= b_first) & real & nsp).astype(np.int8),
              next_sentence_labels=label.astype(np.int32))


def _run_chunk(task: tuple[int, int, int]) -> dict[str, np.ndarray]:
  """Pairs (and their static masking) of documents [lo, hi) in one pass, in document order."""
  job = _JOB
  cfg = job.config
  dupe_pass, lo, hi = task
  flat, counts, noise = [], [], []
  for d in range(lo, hi):
    counts.append(_document_pairs(job, dupe_pass, d, flat))
    if job.mask_id is not None:
      noise.append(_draw_noise(np.random.default_rng(_seeds(cfg.seed, _MASK_RNG, dupe_pass, d)), counts[-1],
                               cfg.max_seq_length, cfg.max_predictions_per_seq, job.vocab_size))
  result = _assemble(job, np.array(flat, np.int64).reshape(-1, 5))
  result["document"] = np.repeat(job.source[lo:hi], counts).astype(np.int32)
  if job.mask_id is not None:
    ids = result["input_ids"]
    real = result["input_mask"].astype(bool)
    cont = job.continuation[ids] if job.continuation is not None else None
    masked = _mask(ids, real, real & (ids != job.cls_id) & (ids != job.sep_id), cont,
                   tuple(np.concatenate(parts) for parts in zip(*noise)),
                   masked_lm_prob=cfg.masked_lm_prob, mask_id=job.mask_id,
                   max_predictions_per_seq=cfg.max_predictions_per_seq,
                   whole_word_mask=cfg.whole_word_mask)
    result.update(_fields(masked))
  return result


def _create(documents, config: InstanceConfig, vocab_size: int, cls_id: int, sep_id: int,
            pad_id: int, mask_id: int | None, continuation, num_workers: int) -> dict:
  global _JOB
  if not isinstance(config, InstanceConfig):
    raise InputError(f"config: expected an InstanceConfig, got {type(config).__name__}")
  ids = dict(cls_id=cls_id, sep_id=sep_id, pad_id=pad_id)
  _check_ids(vocab_size, **ids, **({} if mask_id is None else {"mask_id": mask_id}))
  if not _is_int(num_workers) or num_workers < 1:
    raise InputError(f"num_workers: expected an integer >= 1, got {num_workers!r}")
  corpus = documents if isinstance(documents, Corpus) else Corpus.from_documents(documents)
  if corpus.tokens.min() < 0 or corpus.tokens.max() >= vocab_size:
    raise InputError(f"documents: expected token ids in [0, {vocab_size}), got ids in "
                     f"[{corpus.tokens.min()}, {corpus.tokens.max()}]")
  table = None
  if mask_id is not None:
    table = _continuation_table(continuation, vocab_size, config.whole_word_mask)
  order = np.random.default_rng(_seeds(config.seed, _DOC_SHUFFLE)).permutation(corpus.num_documents)
  job = _Job(corpus=corpus, config=config, seg_lo=corpus.document_bounds[:-1][order],
             seg_hi=corpus.document_bounds[1:][order], source=corpus.document_ids[order],
             vocab_size=vocab_size, mask_id=mask_id, continuation=table, **ids)
  num_docs = corpus.num_documents
  tasks = [(p, lo, min(lo + _CHUNK_DOCS, num_docs))
           for p in range(config.dupe_factor) for lo in range(0, num_docs, _CHUNK_DOCS)]
  _JOB = job
  try:
    if num_workers == 1 or len(tasks) == 1:
      parts = [_run_chunk(t) for t in tasks]
    else:
      with multiprocessing.get_context("fork").Pool(min(num_workers, len(tasks))) as pool:
        parts = list(pool.imap(_run_chunk, tasks))
  finally:
    _JOB = None
  sizes = [len(part["document"]) for part in parts]
  shuffle = np.random.default_rng(_seeds(config.seed, _FINAL_SHUFFLE)).permutation(sum(sizes))
  where = np.empty_like(shuffle)
  where[shuffle] = np.arange(len(shuffle))  # the final row of each row in (pass, document) order
  out = {k: np.empty((len(shuffle),) + v.shape[1:], np.float32 if k == "masked_lm_weights" else np.int32)
         for k, v in parts[0].items()}
  for part, lo, hi in zip(parts, np.cumsum([0] + sizes), np.cumsum(sizes)):
    for k, v in part.items():
      out[k][where[lo:hi]] = v
  return out


def create_pairs(documents: Sequence[Sequence[np.ndarray]] | Corpus, config: InstanceConfig, *,
                 vocab_size: int, cls_id: int, sep_id: int, pad_id: int = 0,
                 num_workers: int = 1) -> Pairs:
  """Unmasked pairs, shuffled: what `create_instances` masks (the same rows in the same order)."""
  return Pairs(**_create(documents, config, vocab_size, cls_id, sep_id, pad_id, None, None,
                         num_workers))


def create_instances(documents: Sequence[Sequence[np.ndarray]] | Corpus, config: InstanceConfig, *,
                     vocab_size: int, cls_id: int, sep_id: int, mask_id: int, pad_id: int = 0,
                     continuation: np.ndarray | None = None, num_workers: int = 1) -> Instances:
  """Pairs plus static masking, shuffled. `continuation`: [vocab_size] bool, True for '##' pieces
  (needed with whole_word_mask)."""
  return Instances(**_create(documents, config, vocab_size, cls_id, sep_id, pad_id, mask_id,
                             continuation, num_workers))
