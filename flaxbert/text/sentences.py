"""Rule-based sentence splitting for running text: pretraining documents (data_prep: one document
per file, TFDS text datasets) and news articles and summaries (extractive summarization).

`split_sentences` ends a sentence at every line break, and at [.!?] (plus closing quotes or
brackets) followed by whitespace and a capital or a digit, unless the "." ends a known
abbreviation ("Mr.", "Inc."), a dotted acronym ("U.S.", "e.g.") or an initial ("J.");
"No. 5" and "pp. 12" keep their number. `split_reference` also splits the BBC summaries that run
sentences together without a space ("…$10.9bn.For the full-year…").
"""
import re

# Words that end with "." without ending the sentence (compared lower-cased, the dot dropped).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr mt rev gen col lt sgt capt cmdr gov sen rep hon inc ltd co corp plc bros "
    "vs v cf al approx dept univ est fig jan feb mar apr jun jul aug sep sept oct nov dec".split())
_BEFORE_NUMBER = frozenset("no nos vol pp p art ch".split())  # "No. 1", "pp. 12"
_OPENERS = "\"'“‘(["
_CLOSERS = "\"'”’)]"
# A sentence end: terminal punctuation, closing quotes/brackets, whitespace, then (after optional
# opening quotes/brackets) a capital letter or a digit.
_BOUNDARY = re.compile(r"([.!?]+)([" + re.escape(_CLOSERS) + r"]*)\s+(?=[" + re.escape(_OPENERS) + r"]*[A-Z0-9])")
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # "U.S", "e.g", "i.e" (the last dot is the match's)
_PARAGRAPHS = re.compile(r"\s*\n\s*")


def _abbreviation(paragraph: str, match: re.Match) -> bool:
  """Whether the "." of `match` ends an abbreviation or an initial rather than the sentence."""
  if match.group(1) != "." or match.group(2):
    return False
  words = paragraph[:match.start()].split()
  word = words[-1].lstrip(_OPENERS) if words else ""
  last = re.split(r"[.!?\"]", word)[-1]  # "Three.Mr" in "Three.Mr.Smith" (a reference, run together)
  if not last:
    return False
  if (any(w.lower() in _ABBREVIATIONS for w in (word, last)) or _DOTTED.fullmatch(word)
      or (len(last) == 1 and last.isupper())):
    return True
  return last.lower() in _BEFORE_NUMBER and paragraph[match.end():match.end() + 1].isdigit()


def split_sentences(text: str) -> list[str]:
  """News text → sentences: every line break ends one, and so does [.!?] (plus closing quotes)
  followed by whitespace and a capital or digit, unless the "." ends a known abbreviation
  ("Mr.", "Inc."), a dotted acronym ("U.S.", "e.g.") or an initial ("J.")."""
  sentences = []
  for paragraph in _PARAGRAPHS.split(text.strip()):
    start = 0
    for match in _BOUNDARY.finditer(paragraph):
      if not _abbreviation(paragraph, match):
        sentences.append(paragraph[start:match.end(2)])
        start = match.end()
    sentences.append(paragraph[start:])
  return [s.strip() for s in sentences if s.strip()]


# BBC summaries: "…$10.9bn.For the full-year…" — terminal punctuation, an optional quote, and the
# next sentence's first character with no space between (SOURCE.md's (?<=[.!?"])(?=[A-Z"'(£$0-9])).
_JOINED = re.compile(r"([.!?]+)([\"”)]?)\s*(?=[A-Z\"'“‘(£$0-9])")


def split_reference(summary: str) -> list[str]:
  """A reference summary → sentences, also where they were concatenated without a space. A
  straight quote after the full stop closes the sentence if it has an unclosed one, else it opens
  the next (")" and "”" always close it); a decimal point ("10.9") and the abbreviations that
  `split_sentences` knows do not end a sentence."""
  sentences = []
  for line in _PARAGRAPHS.split(summary.strip()):
    start = 0
    for match in _JOINED.finditer(line):
      end = match.end()
      decimal = line[match.start() - 1:match.start()].isdigit() and line[end:end + 1].isdigit()
      if end == len(line) or _abbreviation(line, match) or (decimal and end == match.end(1)):
        continue
      quote = match.group(2)
      closes = quote in (")", "”") or (quote == '"' and line.count('"', start, match.start()) % 2 == 1)
      cut = match.end(2) if closes else match.end(1)
      sentences.append(line[start:cut])
      start = cut
    sentences.append(line[start:])
  return [s.strip() for s in sentences if s.strip()]
