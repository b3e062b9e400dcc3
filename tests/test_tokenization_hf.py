"""WordPiece against transformers' BertTokenizer on real text (LitBank, SST-2, WNUT-17, both original vocabs).

Skips with a reason when transformers or the shared data folder is absent.
"""
from pathlib import Path

import pytest

from flaxbert.text.tokenization import SPECIAL_TOKENS, load_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# --- against transformers on real text ----------------------------------------------------------


def _real_texts() -> list[str]:
  texts = []
  books = sorted((SHARED_DATA / "litbank-gutenberg-novels" / "texts").glob("*.txt"))[:4]
  for book in books:
    with open(book, encoding="utf-8") as f:
      texts.extend(line.rstrip("\n") for _, line in zip(range(2000), f))
  with open(SHARED_DATA / "glue-sst2" / "train.tsv", encoding="utf-8") as f:
    texts.extend(line.split("\t")[0] for _, line in zip(range(5000), f))
  words: list[str] = []
  with open(SHARED_DATA / "wnut17" / "wnut17train.conll", encoding="utf-8") as f:
    for line in f:
      if line.strip():
        words.append(line.split("\t")[0])
      elif words:
        texts.append(" ".join(words))
        words = []
  # Long words, to tell 200 characters a word (the original's limit) from transformers' default 100.
  return texts + ["see https://example.org/" + "a1b2c3" * 25 + " now", "zz" * 100 + " ok", "zz" * 101 + "z ok"]


@pytest.mark.parametrize("vocab, lower_case", [("bert-base-uncased-vocab.txt", True),
                                               ("bert-base-cased-vocab.txt", False)])
def test_matches_transformers_bert_tokenizer_on_real_text(vocab, lower_case):
  transformers = pytest.importorskip("transformers", reason="transformers is not installed")
  needed = ["bert-vocab/" + vocab, "litbank-gutenberg-novels/texts", "glue-sst2/train.tsv", "wnut17/wnut17train.conll"]
  if not all((SHARED_DATA / n).exists() for n in needed):
    pytest.skip(f"the shared data folder ({SHARED_DATA}) with bert-vocab, LitBank, SST-2 and WNUT-17 is absent")
  texts = _real_texts()
  assert len(texts) > 10000
  ours = load_tokenizer(SHARED_DATA / "bert-vocab" / vocab, lower_case=lower_case)
  hf = transformers.BertTokenizer(vocab=str(SHARED_DATA / "bert-vocab" / vocab), do_lower_case=lower_case)
  hf.backend_tokenizer.model.max_input_chars_per_word = 200
  # transformers keeps its special tokens whole when they appear in text; the original does not.
  plain = [t for t in texts if not any(s in t for s in SPECIAL_TOKENS)]
  expected = hf(plain, add_special_tokens=False)["input_ids"]
  got = ours.encode_batch(plain)
  differ = [(t, ours.tokenize(t)) for t, g, e in zip(plain, got, expected) if g != e]
  # Where flaxbert departs from transformers (tokenizers' older Unicode tables, private-use and final
  # sigma handling), it follows the original rules.
  assert all(tokens == ours.reference_tokenize(t) for t, tokens in differ), differ[:3]
  assert len(differ) < 10
  sample = plain[::7]
  assert [ours.tokenize(t) for t in sample] == [ours.reference_tokenize(t) for t in sample]
  assert sum(map(len, got)) > 200_000
