"""Extractive summarization data, BertSumExt style (Liu & Lapata 2019): documents, sentences, oracle labels.

This module owns everything of the task that is not the model: reading JSONL documents with
reference summaries (`read_summaries`, sentences split by flaxbert.text.sentences), BERTSum's greedy ROUGE
oracle (`greedy_oracle`), the BertSumExt input (`featurize`: `[CLS] s1 [SEP] [CLS] s2 [SEP] …`
with alternating segment ids), BERTSum's prediction rule (`select`: top-scored sentences with
trigram blocking, here returned in document order), the Lead-k baseline, centroid ranking for
the unsupervised case (`rank_by_centroid`); ROUGE itself is flaxbert.finetune.tasks.scores'. The
training task around it is flaxbert.finetune.tasks.extractive.
"""
import dataclasses
import logging
import os
import re
from typing import Sequence

import numpy as np

from flaxbert.errors import InputError
from flaxbert.finetune.tasks import readers
from flaxbert.finetune.tasks.layout import Specials
from flaxbert.text.sentences import split_sentences

log = logging.getLogger("flaxbert")

# Wordpieces kept of one sentence. BERTSum caps sentences at 200 (CoreNLP) tokens; 128 wordpieces
# keeps news sentences whole (BBC, bert-base-uncased: median 25, p99.9 78; 7 of 39,943 are
# longer) while a run-on "sentence" (a table, a list without full stops) cannot take most of the
# 512 positions from the rest of the document.
MAX_SENTENCE_TOKENS = 128


@dataclasses.dataclass(frozen=True)
class SummaryExample:
  guid: str
  sentences: tuple[str, ...]  # the document's sentences (headline dropped if asked)
  summary: str | None  # the reference; None for predict-only documents
  source: str  # "path:line"


# --- reading ---------------------------------------------------------------------------------------


def _field(record: dict, name: str, where: str, null_ok: bool = False) -> str | None:
  if name not in record:
    raise InputError(f"{where}: expected a {name!r} field (found {sorted(record)})")
  value = record[name]
  if value is None and null_ok:
    return None
  if not isinstance(value, str):
    raise InputError(f"{where}: expected field {name!r} to be a string"
                     f"{' (or null)' if null_ok else ''}, got {type(value).__name__}")
  return value


def read_summaries(path: str | os.PathLike, split: str | None = None, *, article_field: str = "article",
                   summary_field: str = "summary", drop_headline: bool, keep_duplicates: bool = False,
                   report: readers.ReadReport | None = None) -> list[SummaryExample]:
  """Documents of a JSONL file, one object a line: `article_field` (the text; sentences are
  `split_sentences`'), `summary_field` (the reference, null for none), optional "id" (the guid),
  "split" (required when `split` is given: only rows of that split are kept) and "duplicate_of"
  (rows where it is not null are dropped unless `keep_duplicates`). `drop_headline` drops the
  article's first line (a BBC article's headline: its first paragraph, one line). Documents
  without sentences are skipped; skips are counted in `report` and logged."""
  report = report if report is not None else readers.ReadReport(str(path))
  examples, other_split = [], 0
  for line, record in readers.jsonl_rows(path):
    where = f"{path}:{line}"
    if split is not None:
      row_split = _field(record, "split", where)
      if row_split != split:
        other_split += 1
        continue
    article = _field(record, article_field, where)
    summary = _field(record, summary_field, where, null_ok=True)
    if record.get("duplicate_of") is not None and not keep_duplicates:
      report.skip("duplicate")
      continue
    if drop_headline:
      article = article.strip().partition("\n")[2]
    sentences = tuple(split_sentences(article))
    if not sentences:
      report.skip("empty document")
      continue
    guid = record.get("id")
    examples.append(SummaryExample(str(guid) if guid is not None else f"{os.path.basename(path)}-{line}",
                                   sentences, summary, where))
  report.examples = len(examples)
  if report.skipped:
    log.info("%s: skipped %d row(s): %s", path, report.skipped,
             ", ".join(f"{n} {reason}" for reason, n in sorted(report.reasons.items())))
  if split is not None:
    log.info("%s: %d document(s) of split %r (%d row(s) of other splits)", path, len(examples), split, other_split)
  return examples


# --- the greedy ROUGE oracle ------------------------------------------------------------------------


def _oracle_words(text: str) -> list[str]:
  """BERTSum's _rouge_clean on lower-cased text: drop every character but [a-z0-9] and spaces."""
  return re.sub(r"[^a-z0-9\s]", "", text.lower()).split()


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _set_f1(candidate: set, reference: set) -> float:
  """BERTSum's cal_rouge F: n-gram SET overlap (no counts)."""
  overlap = len(candidate & reference)
  precision = overlap / len(candidate) if candidate else 0.0
  recall = overlap / len(reference) if reference else 0.0
  return 2.0 * precision * recall / (precision + recall + 1e-8)


def greedy_oracle(sentences: Sequence[str], summary: str, max_sentences: int) -> list[int]:
  """BERTSum's greedy_selection: add, one at a time, the sentence that most raises ROUGE-1 F +
  ROUGE-2 F (set-based, on lower-cased alphanumeric words) of the selection against the summary;
  stop at `max_sentences` or when no sentence raises it. Sorted sentence indices."""
  reference = _oracle_words(summary)
  ref1, ref2 = _ngrams(reference, 1), _ngrams(reference, 2)
  words = [_oracle_words(s) for s in sentences]
  grams1, grams2 = [_ngrams(w, 1) for w in words], [_ngrams(w, 2) for w in words]
  selected: list[int] = []
  sel1: set = set()
  sel2: set = set()
  best = 0.0
  for _ in range(max_sentences):
    choice, choice_score = -1, best
    for i in range(len(sentences)):
      if i in selected:
        continue
      score = _set_f1(sel1 | grams1[i], ref1) + _set_f1(sel2 | grams2[i], ref2)
      if score > choice_score:
        choice, choice_score = i, score
    if choice < 0:
      break
    selected.append(choice)
    sel1, sel2, best = sel1 | grams1[choice], sel2 | grams2[choice], choice_score
  return sorted(selected)


# --- model input -----------------------------------------------------------------------------------


@dataclasses.dataclass
class SummaryFeatures:
  """BertSumExt inputs, N documents × L positions × S sentence slots (numpy), and host-side counts."""
  input_ids: np.ndarray  # int32 [N, L]
  segment_ids: np.ndarray  # int32 [N, L]: 0/1 alternating per sentence
  input_mask: np.ndarray  # int32 [N, L]
  cls_positions: np.ndarray  # int32 [N, S]: each encoded sentence's [CLS] position, 0 in empty slots
  sentence_ids: np.ndarray  # int32 [N, L]: the sentence slot of each wordpiece, -1 at [CLS]/[SEP]/padding
  sentence_mask: np.ndarray  # int32 [N, S]: 1 for the encoded sentences
  sentence_labels: np.ndarray  # float32 [N, S]: 1 for the oracle's sentences
  num_sentences: np.ndarray  # int32 [N]: sentences encoded (the first ones of the document)

  def __len__(self) -> int:
    return len(self.input_ids)


def featurize(examples: Sequence[SummaryExample], tokenizer, *, max_seq_length: int = 512, max_sentences: int,
              oracle_sentences: int, max_sentence_tokens: int = MAX_SENTENCE_TOKENS) -> SummaryFeatures:
  """Each document as `[CLS] s1 [SEP] [CLS] s2 [SEP] …`, sentence i with segment id i % 2, each
  sentence cut to `max_sentence_tokens` wordpieces. Sentences are taken from the start while the
  whole `[CLS] … [SEP]` fits in `max_seq_length` and there is a slot left (`max_sentences`); the
  first that does not fit ends the document. `sentence_ids` maps each wordpiece to its sentence
  (for sentence vectors pooled over the wordpieces instead of read at [CLS]). Labels:
  `greedy_oracle` of the encoded sentences (at most `oracle_sentences`) against the reference
  (all 0 without one)."""
  if max_sentences < 1 or max_seq_length < 3 or max_sentence_tokens < 1:
    raise InputError(f"summarization: expected max_sentences >= 1, max_seq_length >= 3 and "
                     f"max_sentence_tokens >= 1, got {max_sentences}, {max_seq_length}, {max_sentence_tokens}")
  specials = Specials.of(tokenizer)
  n, length, slots = len(examples), max_seq_length, max_sentences
  out = SummaryFeatures(np.full((n, length), specials.pad, np.int32), np.zeros((n, length), np.int32),
                        np.zeros((n, length), np.int32), np.zeros((n, slots), np.int32),
                        np.full((n, length), -1, np.int32), np.zeros((n, slots), np.int32),
                        np.zeros((n, slots), np.float32), np.zeros(n, np.int32))
  limit = min(max_sentence_tokens, length - 2)  # a sentence longer than the sequence is cut to fit it
  cut_documents = 0
  for row, example in enumerate(examples):
    position, count = 0, 0
    for sentence in example.sentences:
      pieces = tokenizer.encode(sentence)[:limit]
      size = len(pieces) + 2
      if count == slots or position + size > length:
        break
      out.input_ids[row, position:position + size] = [specials.cls, *pieces, specials.sep]
      out.segment_ids[row, position:position + size] = count % 2
      out.input_mask[row, position:position + size] = 1
      out.sentence_ids[row, position + 1:position + size - 1] = count
      out.cls_positions[row, count] = position
      position, count = position + size, count + 1
    cut_documents += count < len(example.sentences)
    out.num_sentences[row] = count
    out.sentence_mask[row, :count] = 1
    if example.summary is not None:
      out.sentence_labels[row, greedy_oracle(example.sentences[:count], example.summary, oracle_sentences)] = 1.0
  if cut_documents:
    log.info("summarization: %d of %d document(s) cut to fit %d positions / %d sentences", cut_documents, n,
             length, slots)
  return out


# --- prediction ------------------------------------------------------------------------------------


def _trigrams(sentence: str) -> set[tuple[str, ...]]:
  """Trigrams of lower-cased words and punctuation marks (BERTSum's are of its tokenized text)."""
  return _ngrams(re.findall(r"\w+|[^\w\s]", sentence.lower()), 3)


def select(scores: np.ndarray, sentences: Sequence[str], num_sentences: int = 3,
           block_trigrams: bool = True) -> list[int]:
  """BERTSum's prediction: candidates by score, highest first (ties: earlier first), skipping one
  that shares a trigram with a sentence already taken (if `block_trigrams`), until
  `num_sentences`; indices in document order. Scores past `len(sentences)` and non-finite ones
  (masked slots) are never chosen."""
  scores = np.asarray(scores, np.float64)[:len(sentences)]
  chosen: list[int] = []
  seen: set = set()
  for i in np.argsort(-scores, kind="stable"):
    if len(chosen) == num_sentences:
      break
    if not np.isfinite(scores[i]):
      continue
    grams = _trigrams(sentences[i]) if block_trigrams else set()
    if grams & seen:
      continue
    chosen.append(int(i))
    seen |= grams
  return sorted(chosen)


def summaries_from_scores(examples: Sequence[SummaryExample], features: SummaryFeatures, scores: np.ndarray,
                          num_sentences: int = 3, block_trigrams: bool = True) -> list[str]:
  """Each document's `select`ed encoded sentences ([N, S] scores), joined with a space."""
  summaries = []
  for example, count, row in zip(examples, features.num_sentences, np.asarray(scores)):
    sentences = example.sentences[:int(count)]
    summaries.append(" ".join(sentences[i] for i in select(row, sentences, num_sentences, block_trigrams)))
  return summaries


def lead(examples: Sequence[SummaryExample], k: int = 3) -> list[str]:
  """The Lead-k baseline: each document's first k sentences, joined with a space."""
  return [" ".join(e.sentences[:k]) for e in examples]


def rank_by_centroid(sentence_vectors: np.ndarray) -> np.ndarray:
  """Unsupervised sentence scores [S]: cosine similarity of each L2-normalised sentence vector
  [S, D] to the normalised mean of the normalised vectors (the document's centroid)."""
  vectors = np.asarray(sentence_vectors, np.float64)
  if vectors.ndim != 2:
    raise ValueError(f"rank_by_centroid: expected sentence vectors [S, D], got shape {vectors.shape}")
  if not len(vectors):
    return np.zeros(0, np.float32)
  unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
  centroid = unit.mean(axis=0)
  centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
  return (unit @ centroid).astype(np.float32)
