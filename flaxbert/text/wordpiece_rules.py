"""The original BERT tokenization rules in pure Python, and where the fast path departs from them.

google-research/bert's tokenization.py (BasicTokenizer + WordpieceTokenizer), one function per
rule: `clean_text`, `split_cjk`, lower-casing + `strip_accents`, `split_on_punctuation`,
`wordpiece_word` (greedy longest match first, [UNK] past 200 characters). `reference_tokenize`
chains them; `words_are_independent` says when a text may be tokenized word by word (the fast
path in tokenization.py, which caches each distinct word's wordpieces).
"""
import re
import unicodedata
from typing import Mapping

UNK = "[UNK]"
MAX_INPUT_CHARS_PER_WORD = 200

# ----------------------------------------------------------------------------------------------
# The reference: the original rules, one function each.

_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def is_whitespace(char: str) -> bool:
  """Space, tab, newline, carriage return, or any Zs character."""
  return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_control(char: str) -> bool:
  """Categories Cc and Cf, except tab, newline and carriage return (which are whitespace)."""
  return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf")


def is_punctuation(char: str) -> bool:
  """All non-alphanumeric printable ASCII (so also '$' '^' '`' '+' ...), or any P* character."""
  cp = ord(char)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(char).startswith("P")


def is_cjk(char: str) -> bool:
  """CJK Unified Ideographs (and Extensions A-E), compatibility ideographs and their supplement."""
  cp = ord(char)
  return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def clean_text(text: str) -> str:
  """Drops NUL, U+FFFD and control characters; every whitespace character becomes a space."""
  out = []
  for char in text:
    if char == "\x00" or char == "\ufffd" or is_control(char):
      continue
    out.append(" " if is_whitespace(char) else char)
  return "".join(out)


def split_cjk(text: str) -> str:
  """Puts spaces around every CJK character, so that each one is a word."""
  return "".join(f" {char} " if is_cjk(char) else char for char in text)


def strip_accents(word: str) -> str:
  """NFD, then drops nonspacing marks (category Mn)."""
  return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


def split_on_punctuation(word: str) -> list[str]:
  """Every punctuation character becomes a word of its own."""
  pieces, current = [], []
  for char in word:
    if is_punctuation(char):
      if current:
        pieces.append("".join(current))
        current = []
      pieces.append(char)
    else:
      current.append(char)
  if current:
    pieces.append("".join(current))
  return pieces


def basic_tokenize(text: str, lower_case: bool) -> list[str]:
  """The original BasicTokenizer: clean, split out CJK, split on whitespace, then per word
  lower-case + strip accents (if lower_case) and split off punctuation."""
  words = []
  for word in split_cjk(clean_text(text)).split():
    if lower_case:
      word = strip_accents(word.lower())  # str.lower() per word: a final 'Σ' becomes 'ς'
    words.extend(split_on_punctuation(word))
  return " ".join(words).split()


def wordpiece_word(word: str, vocab: Mapping[str, int], unk_token: str = UNK,
                   max_chars: int = MAX_INPUT_CHARS_PER_WORD) -> list[str]:
  """Greedy longest-match-first over the vocab, non-initial pieces prefixed '##'; a word longer
  than max_chars, or with any piece not in the vocab, is a single unk_token."""
  if len(word) > max_chars:
    return [unk_token]
  pieces, start = [], 0
  while start < len(word):
    for end in range(len(word), start, -1):
      piece = word[start:end] if start == 0 else "##" + word[start:end]
      if piece in vocab:
        break
    else:
      return [unk_token]
    pieces.append(piece)
    start = end
  return pieces


def reference_tokenize(text: str, vocab: Mapping[str, int], lower_case: bool) -> list[str]:
  """The original FullTokenizer.tokenize: basic_tokenize, then wordpiece_word on each word."""
  return [piece for word in basic_tokenize(text, lower_case) for piece in wordpiece_word(word, vocab)]


# ----------------------------------------------------------------------------------------------
# Where the fast path is not the reference (see the module docstring).


# Characters at which Python's str.split() breaks words but the original does not (it deletes
# control characters before splitting): \x0b \x0c \x1c-\x1f \x85, and \u2028 \u2029 for safety.
_SPLIT_DISAGREES = re.compile("[" + re.escape("".join(
    c for c in map(chr, range(0x3001)) if c.isspace() and not is_whitespace(c))) + "]")


def words_are_independent(text: str) -> bool:
  """Whether the original tokenizes `text` as the concatenation of its str.split() words.

  The rules act on each whitespace-separated word alone (control characters are deleted inside
  it, CJK characters and punctuation split out of it, casing and accents folded per word), so
  this holds unless `text` has a character where Python's split and the original's disagree.
  """
  return _SPLIT_DISAGREES.search(text) is None
# ----------------------------------------------------------------------------------------------
# The interface.
