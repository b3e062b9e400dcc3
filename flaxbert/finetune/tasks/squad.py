"""Extractive QA (SQuAD v1.1 / v2.0) input side: reading the JSON into examples, and examples into
fixed-length features, as google-research/bert's run_squad.py does.

`read_squad` is run_squad's read_squad_examples (whitespace doc tokens, char → word offsets, the
"answer not in the context" check) with every structural problem reported as an InputError that
names the file, the article title and the question id. `featurize` is its
convert_examples_to_features: query truncation, [CLS] question [SEP] doc-window [SEP], sliding
windows every doc_stride wordpieces, `_check_is_max_context`, `_improve_answer_span`, and
(training) answer positions of (0, 0) for windows without the answer and impossible questions.
Post-processing and scoring live in flaxbert.finetune.tasks.squad_post.
"""
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.finetune.tasks.readers import ReadReport
from flaxbert.text.tokenization import CLS, SEP, Tokenizer

log = logging.getLogger("flaxbert")

VERSIONS = {"v1": "v1", "v1.1": "v1", "1.1": "v1", "v2": "v2", "v2.0": "v2", "2.0": "v2"}


def squad_version(version: str) -> str:
  """'v1' or 'v2' from any of the names in VERSIONS."""
  if version not in VERSIONS:
    raise InputError(f"SQuAD version {version!r}: expected one of {', '.join(VERSIONS)}")
  return VERSIONS[version]


@dataclasses.dataclass(frozen=True)
class QAExample:
  """One question on one paragraph.

  doc_tokens: the context split on whitespace exactly as run_squad does. answers: every gold
  (text, answer_start) pair, kept for evaluation. start_word/end_word: the doc_tokens span of the
  first answer when read for training, else -1. is_impossible: v2's flag (False in v1).
  """
  qid: str
  question: str
  context: str
  doc_tokens: tuple[str, ...]
  answers: tuple[tuple[str, int], ...]
  start_word: int = -1
  end_word: int = -1
  is_impossible: bool = False
  title: str = ""


def _is_whitespace(c: str) -> bool:
  """run_squad's whitespace for doc tokens (narrower than str.split: U+00A0 stays inside a word)."""
  return c in " \t\r\n" or ord(c) == 0x202F


def split_doc_tokens(context: str) -> tuple[list[str], list[int]]:
  """(doc_tokens, char_to_word_offset): the context's whitespace words and, per character, the
  index of the word it belongs to (a whitespace character: the word before it; -1 before any)."""
  doc_tokens: list[str] = []
  char_to_word: list[int] = []
  prev_is_whitespace = True
  for c in context:
    if _is_whitespace(c):
      prev_is_whitespace = True
    else:
      if prev_is_whitespace:
        doc_tokens.append(c)
      else:
        doc_tokens[-1] += c
      prev_is_whitespace = False
    char_to_word.append(len(doc_tokens) - 1)
  return doc_tokens, char_to_word


def word_starts(context: str) -> list[int]:
  """The character offset in `context` where each of split_doc_tokens' words begins."""
  starts, prev_is_whitespace = [], True
  for i, c in enumerate(context):
    is_whitespace = _is_whitespace(c)
    if prev_is_whitespace and not is_whitespace:
      starts.append(i)
    prev_is_whitespace = is_whitespace
  return starts


def _get(obj: Any, key: str, kind: type, where: str) -> Any:
  if not isinstance(obj, dict) or key not in obj:
    raise InputError(f"{where}: missing \"{key}\"; expected a {kind.__name__}")
  value = obj[key]
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise InputError(f"{where}: \"{key}\" is {type(value).__name__} {value!r:.60}; expected a {kind.__name__}")
  return value


def _load_json(path: Path) -> list:
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except OSError as e:
    raise InputError(f"{path}: cannot read the SQuAD file ({e.strerror or e})") from None
  except UnicodeDecodeError as e:
    raise InputError(f"{path}: not UTF-8 (byte {e.start}); expected a SQuAD JSON file") from None
  except json.JSONDecodeError as e:
    raise InputError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); "
                     'expected a SQuAD file {"data": [{"title", "paragraphs": [...]}]}') from None
  return _get(data, "data", list, f"{path}")


def read_squad(path: str | os.PathLike, version: str, training: bool,
               report: ReadReport | None = None) -> list[QAExample]:
  """The questions of a SQuAD v1.1 / v2.0 JSON file, in file order (`squad_examples`)."""
  return squad_examples(_load_json(storage.path(path)), str(path), version, training, report)


def squad_examples(articles: list, source: str, version: str, training: bool,
                   report: ReadReport | None = None) -> list[QAExample]:
  """The questions of SQuAD's "data" list (articles), in order; errors and warnings name `source`.

  Training: a question's first answer gives start_word/end_word; one whose text is not found in
  the words at its answer_start (run_squad's check) is skipped, counted in `report` and warned
  about. Evaluation keeps every question with all its gold answers. v2 training needs
  "is_impossible" on every question; an impossible question with answers is an error.
  """
  v2 = squad_version(version) == "v2"
  report = report if report is not None else ReadReport(source)
  examples: list[QAExample] = []
  seen: dict[str, str] = {}
  for a, article in enumerate(articles):
    title = article.get("title", f"#{a}") if isinstance(article, dict) else f"#{a}"
    where_article = f"{source}: article {title!r}"
    for p, paragraph in enumerate(_get(article, "paragraphs", list, where_article)):
      where_par = f"{where_article}, paragraph {p}"
      context = _get(paragraph, "context", str, where_par)
      doc_tokens, char_to_word = split_doc_tokens(context)
      for q, qa in enumerate(_get(paragraph, "qas", list, where_par)):
        qid = _get(qa, "id", str, f"{where_par}, question {q}")
        where = f"{where_article}, question id {qid!r}"
        if qid in seen:
          raise InputError(f"{where}: the id is used twice (also in article {seen[qid]!r}); ids must be unique")
        seen[qid] = title
        question = _get(qa, "question", str, where)
        answers = []
        for n, answer in enumerate(_get(qa, "answers", list, where)):
          text = _get(answer, "text", str, f"{where}, answer {n}")
          start = _get(answer, "answer_start", int, f"{where}, answer {n}")
          if start < 0:
            raise InputError(f"{where}, answer {n}: answer_start is {start}; expected a character offset >= 0")
          answers.append((text, start))
        is_impossible = False
        if v2 and (training or "is_impossible" in qa):
          is_impossible = _get(qa, "is_impossible", bool, where)
        if is_impossible and answers:
          raise InputError(f"{where}: is_impossible is true but it has {len(answers)} answer(s); "
                           "expected \"answers\": [] for an impossible question")
        start_word = end_word = -1
        if training and not is_impossible:
          if not answers:
            raise InputError(f"{where}: no answers; a training question needs one"
                             + ("" if v2 else " (v1 has no impossible questions)"))
          text, offset = answers[0]
          if not text:
            raise InputError(f"{where}: the answer text is empty; expected the answer's words")
          span = _answer_words(text, offset, doc_tokens, char_to_word)
          if span is None:
            report.skip("answer not in the context", qid)
            continue
          start_word, end_word = span
        examples.append(QAExample(qid, question, context, tuple(doc_tokens), tuple(answers),
                                  start_word, end_word, is_impossible, str(title)))
  if report.skipped:
    log.warning("%s: skipped %d questions whose answer is not in the context (first ids: %s)",
                source, report.skipped, ", ".join(report.skipped_ids[:5]))
  return examples


def _answer_words(text: str, offset: int, doc_tokens: Sequence[str],
                  char_to_word: Sequence[int]) -> tuple[int, int] | None:
  """The doc-token span of an answer, or None where run_squad would log "Could not find answer"."""
  last = offset + len(text) - 1
  if last >= len(char_to_word) or char_to_word[offset] < 0:
    return None
  start, end = char_to_word[offset], char_to_word[last]
  actual_text = " ".join(doc_tokens[start:end + 1])
  cleaned = " ".join(text.strip().split())
  return (start, end) if actual_text.find(cleaned) != -1 else None


# ----------------------------------------------------------------------------------------------
# Features.


@dataclasses.dataclass
class QAFeatures:
  """One row per (example, doc window). Arrays are int32; the lists are host-side, for post-processing.

  start_positions/end_positions: the answer's token indices in the window (training), 0 ([CLS])
  where the window lacks the answer or the question is impossible, and 0 when not training.
  token_to_orig_map: window token index → doc word index (context tokens only).
  token_is_max_context: window token index → whether this window gives that token the most context.
  """
  input_ids: np.ndarray
  segment_ids: np.ndarray
  input_mask: np.ndarray
  start_positions: np.ndarray
  end_positions: np.ndarray
  example_index: np.ndarray
  tokens: list[list[str]]
  token_to_orig_map: list[dict[int, int]]
  token_is_max_context: list[dict[int, bool]]

  def __len__(self) -> int:
    return len(self.tokens)


def _improve_answer_span(doc_pieces: Sequence[str], start: int, end: int, tokenizer: Tokenizer,
                         answer_text: str) -> tuple[int, int]:
  """The smallest wordpiece sub-span equal to the answer's own wordpieces (e.g. "1895" inside the
  word "(1895-1943)."), else the word-aligned span unchanged."""
  tok_answer_text = " ".join(tokenizer.tokenize(answer_text))
  for new_start in range(start, end + 1):
    for new_end in range(end, new_start - 1, -1):
      if " ".join(doc_pieces[new_start:new_end + 1]) == tok_answer_text:
        return new_start, new_end
  return start, end


def _doc_spans(n_pieces: int, max_tokens_for_doc: int, doc_stride: int) -> list[tuple[int, int]]:
  """(start, length) windows over the doc's wordpieces, as run_squad's sliding window."""
  spans: list[tuple[int, int]] = []
  start = 0
  while start < n_pieces:
    length = min(n_pieces - start, max_tokens_for_doc)
    spans.append((start, length))
    if start + length == n_pieces:
      break
    start += min(length, doc_stride)
  return spans


def _max_context_spans(spans: Sequence[tuple[int, int]], n_pieces: int) -> list[int]:
  """Per doc wordpiece, the window that gives it the most context: run_squad's
  _check_is_max_context (score min(left, right) + 0.01 * length; the first best wins)."""
  best_score = [float("-inf")] * n_pieces
  best_span = [-1] * n_pieces
  for index, (start, length) in enumerate(spans):
    end = start + length - 1
    for position in range(start, end + 1):
      score = min(position - start, end - position) + 0.01 * length
      if score > best_score[position]:
        best_score[position] = score
        best_span[position] = index
  return best_span


def featurize(examples: Sequence[QAExample], tokenizer: Tokenizer, max_seq_length: int = 384,
              doc_stride: int = 128, max_query_length: int = 64, *, training: bool) -> QAFeatures:
  """run_squad's convert_examples_to_features: each example becomes one feature per doc window.

  An example whose context has no wordpieces has no features. max_seq_length must leave room for
  [CLS], the (truncated) question, two [SEP] and at least one context token.
  """
  for name, value in (("max_seq_length", max_seq_length), ("doc_stride", doc_stride),
                      ("max_query_length", max_query_length)):
    if not isinstance(value, int) or value < 1:
      raise InputError(f"featurize: {name} is {value!r}; expected a positive integer")
  cls_id, sep_id = tokenizer.convert_tokens_to_ids([CLS, SEP])
  word_cache: dict[str, tuple[list[str], list[int]]] = {}
  rows: dict[str, list] = {k: [] for k in ("input_ids", "segment_ids", "input_mask", "start",
                                           "end", "example", "tokens", "orig", "max_context")}
  for example_index, ex in enumerate(examples):
    query = tokenizer.tokenize(ex.question)[:max_query_length]
    query_ids = tokenizer.convert_tokens_to_ids(query)
    max_tokens_for_doc = max_seq_length - len(query) - 3
    if max_tokens_for_doc < 1:
      raise InputError(f"featurize: max_seq_length {max_seq_length} leaves no room for the context of "
                       f"question id {ex.qid!r} (article {ex.title!r}), whose question has {len(query)} "
                       f"wordpieces after max_query_length {max_query_length}; expected max_seq_length "
                       f">= {len(query) + 4}")
    tok_to_orig: list[int] = []
    orig_to_tok: list[int] = []
    doc_pieces: list[str] = []
    doc_ids: list[int] = []
    for i, word in enumerate(ex.doc_tokens):
      orig_to_tok.append(len(doc_pieces))
      cached = word_cache.get(word)
      if cached is None:
        pieces = tokenizer.tokenize(word)
        cached = word_cache[word] = (pieces, tokenizer.convert_tokens_to_ids(pieces))
      doc_pieces.extend(cached[0])
      doc_ids.extend(cached[1])
      tok_to_orig.extend([i] * len(cached[0]))

    tok_start = tok_end = -1
    if training and not ex.is_impossible:
      if ex.start_word < 0 or ex.end_word < ex.start_word or not ex.answers:
        raise InputError(f"featurize: question id {ex.qid!r} (article {ex.title!r}) has no answer span; "
                         "expected examples read with read_squad(..., training=True)")
      tok_start = orig_to_tok[ex.start_word]
      if ex.end_word < len(ex.doc_tokens) - 1:
        tok_end = orig_to_tok[ex.end_word + 1] - 1
      else:
        tok_end = len(doc_pieces) - 1
      tok_start, tok_end = _improve_answer_span(doc_pieces, tok_start, tok_end, tokenizer, ex.answers[0][0])

    spans = _doc_spans(len(doc_pieces), max_tokens_for_doc, doc_stride)
    best_span = _max_context_spans(spans, len(doc_pieces))
    doc_offset = len(query) + 2
    for span_index, (start, length) in enumerate(spans):
      tokens = [CLS] + query + [SEP] + doc_pieces[start:start + length] + [SEP]
      ids = [cls_id] + query_ids + [sep_id] + doc_ids[start:start + length] + [sep_id]
      n = len(ids)
      rows["tokens"].append(tokens)
      rows["input_ids"].append(ids + [0] * (max_seq_length - n))
      rows["input_mask"].append([1] * n + [0] * (max_seq_length - n))
      rows["segment_ids"].append([0] * doc_offset + [1] * (length + 1) + [0] * (max_seq_length - n))
      rows["orig"].append({doc_offset + i: tok_to_orig[start + i] for i in range(length)})
      rows["max_context"].append({doc_offset + i: best_span[start + i] == span_index for i in range(length)})
      start_position = end_position = 0
      if training and not ex.is_impossible and start <= tok_start and tok_end <= start + length - 1:
        start_position = tok_start - start + doc_offset
        end_position = tok_end - start + doc_offset
      rows["start"].append(start_position)
      rows["end"].append(end_position)
      rows["example"].append(example_index)

  def array(key: str, width: int | None = None) -> np.ndarray:
    shape = (len(rows[key]),) if width is None else (len(rows[key]), width)
    return np.asarray(rows[key], np.int32).reshape(shape)

  return QAFeatures(
      input_ids=array("input_ids", max_seq_length), segment_ids=array("segment_ids", max_seq_length),
      input_mask=array("input_mask", max_seq_length), start_positions=array("start"),
      end_positions=array("end"), example_index=array("example"), tokens=rows["tokens"],
      token_to_orig_map=rows["orig"], token_is_max_context=rows["max_context"])
