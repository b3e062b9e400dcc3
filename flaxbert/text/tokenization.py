"""BERT tokenization behind one interface: WordPiece (the original Google rules) or sentencepiece.

`load_tokenizer(path)` reads a WordPiece `vocab.txt`, a sentencepiece `.model`, or a folder holding
one (plus, optionally, the `tokenizer_config.json` that `Tokenizer.save` writes).

WordPiece follows google-research/bert's tokenization.py rule for rule (flaxbert.text.wordpiece_rules:
BasicTokenizer + WordpieceTokenizer, at most 200 characters a word). Those rules act on each
whitespace-separated word alone, so a text is tokenized as the concatenation of its words' pieces,
and each distinct word is tokenized once and remembered (natural text repeats its words: LitBank's
11M words have a few hundred thousand distinct forms). The result is the reference's by
construction; only texts with a character where Python's str.split() and the original disagree
(control characters such as \x0b or \x1c, `wordpiece_rules.words_are_independent`) go through the
rules whole. There is no second implementation to drift from the original.
"""
import itertools
import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece

from flaxbert import atomic, storage
from flaxbert.errors import InputError
from flaxbert.text.wordpiece_rules import UNK, reference_tokenize, wordpiece_word, words_are_independent

PAD, CLS, SEP, MASK = "[PAD]", "[CLS]", "[SEP]", "[MASK]"
# In printable ASCII every non-alphanumeric character is punctuation to the original (33-47,
# 58-64, 91-96, 123-126), so a word splits into alphanumeric runs and single other characters.
_ASCII_PIECES = re.compile(r"[0-9A-Za-z]+|[^0-9A-Za-z]")
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
VOCAB_FILE = "vocab.txt"
SPM_FILE = "spm.model"
HF_TOKENIZER_FILE = "tokenizer.json"  # transformers' fast-tokenizer file: a folder saved by transformers v5 has no vocab.txt
CONFIG_FILE = "tokenizer_config.json"
KINDS = ("wordpiece", "sentencepiece")
SPM_SPACE = "\u2581"  # '▁', sentencepiece's word-start marker

class Tokenizer:
  """A vocabulary with BERT's special tokens, and text → wordpieces/ids. Subclasses: WordPiece, SentencePiece."""

  kind: str = ""

  def __init__(self, vocab: Sequence[str], lower_case: bool, source: str):
    self._vocab = list(vocab)
    self._ids = {token: i for i, token in enumerate(self._vocab)}
    self._lower_case = bool(lower_case)
    self.source = source
    missing = [t for t in SPECIAL_TOKENS if t not in self._ids]
    if missing:
      raise InputError(f"{source}: the vocabulary lacks the special token(s) {' '.join(missing)}; "
                       f"a BERT vocabulary must hold all of {' '.join(SPECIAL_TOKENS)}")
    self._special = frozenset(SPECIAL_TOKENS)

  def tokenize(self, text: str) -> list[str]:
    """The wordpieces of `text`, without special tokens."""
    raise NotImplementedError

  def encode(self, text: str) -> list[int]:
    """The ids of `text`'s wordpieces, without special tokens."""
    raise NotImplementedError

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    """`encode` over many texts at once; what data preparation calls."""
    raise NotImplementedError

  def _save_model(self, directory: Path) -> None:
    raise NotImplementedError

  @property
  def vocab(self) -> list[str]:
    """The tokens, by id."""
    return list(self._vocab)

  @property
  def vocab_size(self) -> int:
    return len(self._vocab)

  @property
  def lower_case(self) -> bool:
    return self._lower_case

  pad_id = property(lambda self: self._ids[PAD], doc="The id of [PAD].")
  unk_id = property(lambda self: self._ids[UNK], doc="The id of [UNK].")
  cls_id = property(lambda self: self._ids[CLS], doc="The id of [CLS].")
  sep_id = property(lambda self: self._ids[SEP], doc="The id of [SEP].")
  mask_id = property(lambda self: self._ids[MASK], doc="The id of [MASK].")

  def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
    """Ids by token; a token not in the vocabulary is [UNK] (as in the original)."""
    unk = self.unk_id
    return [self._ids.get(token, unk) for token in tokens]

  def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
    out = []
    for i in ids:
      if not 0 <= int(i) < len(self._vocab):
        raise InputError(f"token id {i} is out of range for {self.source} (vocabulary size {len(self._vocab)})")
      out.append(self._vocab[int(i)])
    return out

  def is_continuation(self, token: str) -> bool:
    """Whether `token` continues the word before it (for whole-word masking). Special tokens never do."""
    raise NotImplementedError

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids` (generated tokens), BERT's special tokens dropped."""
    ids = [int(i) for i in ids]
    kept = [i for i, t in zip(ids, self.convert_ids_to_tokens(ids)) if t not in self._special]
    return self._detokenize(kept, self.convert_ids_to_tokens(kept))

  def _detokenize(self, ids: list[int], tokens: list[str]) -> str:
    raise NotImplementedError

  def save(self, directory: str | os.PathLike) -> Path:
    """Writes vocab.txt or spm.model, and tokenizer_config.json; load_tokenizer(directory) reloads it."""
    directory = storage.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    self._save_model(directory)
    config = {"kind": self.kind, "lower_case": self._lower_case}
    atomic.write_json(directory / CONFIG_FILE, config)
    return directory

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.source!r}, vocab_size={self.vocab_size}, lower_case={self._lower_case})"


def _check_text(text, index: int | None = None) -> str:
  if not isinstance(text, str):
    where = "text" if index is None else f"text #{index}"
    raise InputError(f"{where} is a {type(text).__name__}; expected str")
  return text


_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class WordPieceTokenizer(Tokenizer):
  """The original BERT WordPiece tokenization, word by word with a cache (see the module docstring)."""

  kind = "wordpiece"
  _CACHE_LIMIT = 1 << 21  # distinct words remembered; the cache restarts when full (bounded memory)

  def __init__(self, vocab: Sequence[str], lower_case: bool = True, source: str = "<vocab>"):
    super().__init__(vocab, lower_case, source)
    self._cache: dict[str, list[int]] = {}
    self._piece_cache: dict[str, list[int]] = {}

  def reference_tokenize(self, text: str) -> list[str]:
    """The rules applied to the whole text at once (slow; the definition the fast path must equal)."""
    return reference_tokenize(_check_text(text), self._ids, self._lower_case)

  def _word_ids(self, word: str) -> list[int]:
    """A whitespace-free word's ids, remembered. For printable ASCII the rules reduce to: lower-case
    (uncased), split off every non-alphanumeric character, WordPiece each piece (pieces remembered
    too: "Word," and "word." share "word"); anything else goes through the rules in full."""
    ids = self._cache.get(word)
    if ids is None:
      if len(self._cache) >= self._CACHE_LIMIT:
        self._cache.clear()
        self._piece_cache.clear()
      if word.isascii() and word.isprintable():
        pieces = _ASCII_PIECES.findall(word.lower() if self._lower_case else word)
        ids = [i for piece in pieces for i in self._piece_ids(piece)]
      else:
        ids = [self._ids[t] for t in reference_tokenize(word, self._ids, self._lower_case)]
      self._cache[word] = ids
    return ids

  def _piece_ids(self, piece: str) -> list[int]:
    ids = self._piece_cache.get(piece)
    if ids is None:
      ids = self._piece_cache[piece] = [self._ids[t] for t in wordpiece_word(piece, self._ids)]
    return ids

  def _encode(self, text: str) -> list[int]:
    if not words_are_independent(text):
      return [self._ids[t] for t in reference_tokenize(text, self._ids, self._lower_case)]
    cache, word_ids = self._cache, self._word_ids
    return list(itertools.chain.from_iterable([cache.get(w) or word_ids(w) for w in text.split()]))

  def tokenize(self, text: str) -> list[str]:
    return [self._vocab[i] for i in self._encode(_check_text(text))]

  def encode(self, text: str) -> list[int]:
    return self._encode(_check_text(text))

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    return [self._encode(_check_text(t, i)) for i, t in enumerate(texts)]

  def is_continuation(self, token: str) -> bool:
    return token.startswith("##")

  def _detokenize(self, ids: list[int], tokens: list[str]) -> str:
    """Wordpieces joined ("##" pieces glued on), then transformers' clean_up_tokenization: no space
    before . , ! ? or inside English contractions. WordPiece keeps no record of the original spacing,
    so this is the usual approximation."""
    text = " ".join(tokens).replace(" ##", "").removeprefix("##")
    for spaced, joined in _CLEAN_UP:
      text = text.replace(spaced, joined)
    return text

  def _save_model(self, directory: Path) -> None:
    atomic.write_text(directory / VOCAB_FILE, "".join(t + "\n" for t in self._vocab))


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model (unigram or BPE) whose vocabulary holds BERT's special tokens."""

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes, lower_case: bool = True, source: str = "<spm>"):
    processor = sentencepiece.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError, TypeError) as e:
      raise InputError(f"{source}: not a sentencepiece model ({e})") from None
    self._sp = processor
    self._proto = model_proto
    super().__init__([processor.id_to_piece(i) for i in range(processor.get_piece_size())], lower_case, source)

  def _prepare(self, text: str) -> str:
    return text.lower() if self._lower_case else text

  def tokenize(self, text: str) -> list[str]:
    return self._sp.encode(self._prepare(_check_text(text)), out_type=str)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(self._prepare(_check_text(text)), out_type=int)

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    texts = [self._prepare(_check_text(t, i)) for i, t in enumerate(texts)]
    return self._sp.encode(texts, out_type=int) if texts else []

  def is_continuation(self, token: str) -> bool:
    return not token.startswith(SPM_SPACE) and token not in self._special

  def _detokenize(self, ids: list[int], tokens: list[str]) -> str:
    return self._sp.decode(ids)

  def _save_model(self, directory: Path) -> None:
    atomic.write_bytes(directory / SPM_FILE, self._proto)


# ----------------------------------------------------------------------------------------------
# Loading.


def read_hf_tokenizer_vocab(path: Path) -> tuple[list[str], bool]:
  """(tokens by id, lower_case) of a transformers tokenizer.json holding a BERT WordPiece model."""
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
    model, normalizer = data["model"], data.get("normalizer") or {}
    if model.get("type") != "WordPiece" or model.get("continuing_subword_prefix", "##") != "##":
      raise InputError(f"{path}: a {model.get('type')} tokenizer; expected BERT's WordPiece (prefix '##')")
    by_id = sorted((int(i), t) for t, i in model["vocab"].items())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
    raise InputError(f"{path}: not a readable transformers tokenizer.json ({type(e).__name__}: {e})") from None
  if [i for i, _ in by_id] != list(range(len(by_id))):
    raise InputError(f"{path}: the WordPiece ids are not 0…{len(by_id) - 1} without gaps")
  return [t for _, t in by_id], bool(normalizer.get("lowercase", True))


def read_wordpiece_vocab(path: str | os.PathLike) -> list[str]:
  """A vocab.txt's tokens by id: one a line, stripped (as the original); empty or duplicate tokens are errors."""
  path = storage.path(path)
  try:
    text = path.read_bytes().decode("utf-8")
  except OSError as e:
    raise InputError(f"{path}: cannot read the vocabulary ({e.strerror or e})") from None
  except UnicodeDecodeError as e:
    raise InputError(f"{path}: not UTF-8 (byte {e.start}); a vocab.txt is UTF-8, one token a line") from None
  lines = re.split(r"\r\n|\r|\n", text)
  if lines and lines[-1] == "":
    lines.pop()
  tokens = [line.strip() for line in lines]
  if not tokens:
    raise InputError(f"{path}: the vocabulary is empty; expected one token a line")
  if "\t" in lines[0]:
    raise InputError(f"{path}: line 1 holds a tab ({lines[0]!r}); a vocab.txt has one token a line "
                     "(a sentencepiece .vocab file? load its .model instead)")
  blank = [n for n, t in enumerate(tokens, 1) if not t]
  if blank:
    raise InputError(f"{path}: empty token on line(s) {_first(blank)}; expected one token a line")
  seen: dict[str, list[int]] = {}
  for n, token in enumerate(tokens, 1):
    seen.setdefault(token, []).append(n)
  duplicates = [f"{t!r} on lines {', '.join(map(str, ns))}" for t, ns in seen.items() if len(ns) > 1]
  if duplicates:
    raise InputError(f"{path}: duplicate tokens: {_first(duplicates, sep='; ')}; every token must be unique")
  return tokens


def _first(items: list, limit: int = 10, sep: str = ", ") -> str:
  more = f"{sep}... ({len(items) - limit} more)" if len(items) > limit else ""
  return sep.join(map(str, items[:limit])) + more


def _read_config(path: Path) -> dict:
  try:
    config = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: unreadable ({e}); expected JSON like "
                     '{"kind": "wordpiece", "lower_case": true}') from None
  if not isinstance(config, dict):
    raise InputError(f"{path}: expected a JSON object, got {type(config).__name__}")
  if "kind" in config and config["kind"] not in KINDS:
    raise InputError(f"{path}: \"kind\" is {config['kind']!r}; expected one of {', '.join(KINDS)}")
  lower = config.get("lower_case", config.get("do_lower_case"))  # do_lower_case: HF's name for it
  if lower is not None and not isinstance(lower, bool):
    raise InputError(f"{path}: \"lower_case\" is {lower!r}; expected true or false")
  return {"kind": config.get("kind"), "lower_case": lower}


def _find_model_file(directory: Path, kind: str | None) -> Path:
  """The vocabulary file in `directory`: vocab.txt, or spm.model, or its only *.model."""
  vocab = directory / VOCAB_FILE
  spm = [directory / SPM_FILE] if (directory / SPM_FILE).is_file() else sorted(directory.glob("*.model"))
  if kind is None:
    if vocab.is_file() and spm:
      raise InputError(f"{directory}: holds both {VOCAB_FILE} and {', '.join(p.name for p in spm)}; add "
                       f"{CONFIG_FILE} with \"kind\" or pass the file itself")
    if not vocab.is_file() and not spm:
      if (directory / HF_TOKENIZER_FILE).is_file():
        return directory / HF_TOKENIZER_FILE
      raise InputError(f"{directory}: no {VOCAB_FILE}, {HF_TOKENIZER_FILE} or a sentencepiece .model in this folder")
    kind = "wordpiece" if vocab.is_file() else "sentencepiece"
  if kind == "wordpiece":
    if not vocab.is_file():
      raise InputError(f"{directory}: {CONFIG_FILE} says kind \"wordpiece\" but there is no {VOCAB_FILE}")
    return vocab
  if not spm:
    raise InputError(f"{directory}: {CONFIG_FILE} says kind \"sentencepiece\" but there is no .model file")
  if len(spm) > 1:
    raise InputError(f"{directory}: several .model files ({', '.join(p.name for p in spm)}) and no {SPM_FILE}; "
                     "pass the one to use")
  return spm[0]


def load_tokenizer(path: str | os.PathLike, lower_case: bool | None = None) -> Tokenizer:
  """A Tokenizer from a vocab.txt, a sentencepiece .model, or a folder holding one.

  lower_case: None means the folder's tokenizer_config.json's "lower_case" (or HF's "do_lower_case"),
  else True. Given for a folder whose config says otherwise, it is an error (a cased model fed
  lower-cased text, or the reverse, silently degrades it).
  """
  path = storage.path(path)
  if not path.exists():
    raise InputError(f"{path}: no such file or folder; expected a WordPiece vocab.txt, a sentencepiece "
                     ".model, or a folder holding one")
  config = {"kind": None, "lower_case": None}
  if path.is_dir():
    if (path / CONFIG_FILE).is_file():
      config = _read_config(path / CONFIG_FILE)
    file = _find_model_file(path, config["kind"])
    if lower_case is not None and config["lower_case"] is not None and lower_case != config["lower_case"]:
      raise InputError(f"{path / CONFIG_FILE}: says lower_case={str(config['lower_case']).lower()} but "
                       f"lower_case={lower_case} was asked for; leave lower_case out to use the folder's")
  else:
    file = path
  if file.name == HF_TOKENIZER_FILE:
    vocab, lower = read_hf_tokenizer_vocab(file)
    return WordPieceTokenizer(vocab, next(v for v in (lower_case, config["lower_case"], lower) if v is not None),
                              source=str(file))
  lower = next(v for v in (lower_case, config["lower_case"], True) if v is not None)
  if file.suffix == ".model":
    try:
      proto = file.read_bytes()
    except OSError as e:
      raise InputError(f"{file}: cannot read the sentencepiece model ({e.strerror or e})") from None
    return SentencePieceTokenizer(proto, lower, source=str(file))
  return WordPieceTokenizer(read_wordpiece_vocab(file), lower, source=str(file))
