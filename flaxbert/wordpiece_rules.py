"""The original BERT tokenization rules in pure Python, and where the fast path departs from them.

google-research/bert's tokenization.py (BasicTokenizer + WordpieceTokenizer), one function per
rule: `clean_text`, `split_cjk`, lower-casing + `strip_accents`, `split_on_punctuation`,
`wordpiece_word` (greedy longest match first, [UNK] past 200 characters). `reference_tokenize`
chains them. `fast_path_unsafe(text)` says whether the `tokenizers` library (the fast path in
tokenization.py) could tokenize `text` differently; see tokenization.py's docstring for the list.
"""
import re
import unicodedata
from typing import Iterable, Mapping

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


def _parse_ranges(spec: str) -> tuple[tuple[int, int], ...]:
  """'061D 0890-0891' → ((0x61D, 0x61D), (0x890, 0x891))."""
  ranges = []
  for item in spec.split():
    lo, _, hi = item.partition("-")
    ranges.append((int(lo, 16), int(hi or lo, 16)))
  return tuple(ranges)


_PRIVATE_USE = ((0xE000, 0xF8FF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD))
_TOKENIZERS_CJK_GAP = ((0x2B820, 0x2B91F),)
# Generated by comparing both paths on every code point (Python 3.11's Unicode 14.0, tokenizers 0.23);
# tests/test_tokenization.py repeats the comparison.
_STALE_TABLES = _parse_ranges(
    "061D 07FD 0890-0891 0898-089F 08CA-08E2 09FD-09FE 0A76 0AFA-0AFF 0B55 0C04 0C3C 0C77 0C84 0D00 "
    "0D3B-0D3C 0D81 0EBA 166D 1734 180F 1885-1886 1ABF-1ACE 1B7D-1B7E 1C89 1DF6-1DFB 2E43-2E4F 2E52-2E5D "
    "A7CB-A7CC A7CE A7D2 A7D4 A7DA A7DC A82C A8C5 A8FF A9BD 10D24-10D27 10D50-10D65 10EAB-10EAD "
    "10F46-10F50 10F55-10F59 10F82-10F89 11070 11073-11074 110C2 110CD 111C9 111CF 1123E 1133B "
    "11438-1143F 11442-11444 11446 1144B-1144F 1145A-1145B 1145D-1145E 11660-1166C 116B9 1182F-11837 "
    "11839-1183B 11938 1193B-1193C 1193E 11943-11946 119D4-119D7 119DA-119DB 119E0 119E2 11A01-11A0A "
    "11A33-11A38 11A3B-11A47 11A51-11A56 11A59-11A5B 11A8A-11A96 11A98-11A9C 11A9E-11AA2 11C30-11C36 "
    "11C38-11C3D 11C3F 11C41-11C45 11C70-11C71 11C92-11CA7 11CAA-11CB0 11CB2-11CB3 11CB5-11CB6 "
    "11D31-11D36 11D3A 11D3C-11D3D 11D3F-11D45 11D47 11D90-11D91 11D95 11D97 11EF3-11EF4 11EF7-11EF8 "
    "11FFF 12FF1-12FF2 13430-13438 16E97-16E9A 16EA0-16EB8 16F4F 16FE2 16FE4 1CF00-1CF2D 1CF30-1CF46 "
    "1E000-1E006 1E008-1E018 1E01B-1E021 1E023-1E024 1E026-1E02A 1E130-1E136 1E2AE 1E2EC-1E2EF "
    "1E944-1E94A 1E95E-1E95F"
)
_FINAL_SIGMA = ((0x03A3, 0x03A3),)


def _char_class(ranges: Iterable[tuple[int, int]]) -> re.Pattern:
  parts = [re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges]
  return re.compile("[" + "".join(parts) + "]")


_FAST_PATH_UNSAFE = {
    False: _char_class(_PRIVATE_USE + _TOKENIZERS_CJK_GAP + _STALE_TABLES),
    True: _char_class(_PRIVATE_USE + _TOKENIZERS_CJK_GAP + _STALE_TABLES + _FINAL_SIGMA),
}


def fast_path_unsafe(text: str, lower_case: bool) -> bool:
  """Whether `text` holds a character on which tokenizers' BERT pipeline departs from the original."""
  return not text.isascii() and _FAST_PATH_UNSAFE[lower_case].search(text) is not None


# ----------------------------------------------------------------------------------------------
# The interface.
