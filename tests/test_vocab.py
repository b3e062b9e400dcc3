"""data_prep.vocab: sentencepiece and WordPiece vocabularies trained on a small generated corpus."""
import random
from pathlib import Path

import pytest

from data_prep.vocab import corpus_lines, train_sentencepiece, train_wordpiece
from flaxbert.errors import InputError
from flaxbert.text.tokenization import SPECIAL_TOKENS, load_tokenizer
from flaxbert.text.wordpiece_rules import basic_tokenize

_STEMS = "walk talk play jump read paint build sing cook clean climb dream".split()
_AFFIXES = ("", "s", "ed", "ing", "er", "ers")
_OTHER = "the a river city old small quickly slowly under over near with and but then".split()


def _sentences(n: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  words = [s + a for s in _STEMS for a in _AFFIXES] + _OTHER
  out = []
  for _ in range(n):
    sentence = " ".join(rng.choice(words) for _ in range(rng.randint(5, 14)))
    out.append(sentence[0].upper() + sentence[1:] + rng.choice([".", "!", "?"]))
  return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
  """Two files of synthetic sentences, one a line, with blank lines between paragraphs."""
  directory = tmp_path_factory.mktemp("corpus")
  files = []
  for k in range(2):
    lines = _sentences(300, seed=k)
    for i in range(0, len(lines), 40):
      lines.insert(i, "")
    files.append(directory / f"part{k}.txt")
    files[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
  return files


def _words_from_pieces(tokenizer, pieces: list[str], strip: str) -> list[str]:
  """Rebuilds words from pieces using only is_continuation (as whole-word masking will)."""
  words: list[str] = []
  for piece in pieces:
    if tokenizer.is_continuation(piece) and words:
      words[-1] += piece[len(strip):] if strip == "##" else piece
    else:
      words.append(piece.lstrip(strip) if strip == "\u2581" else piece)
  return [w for w in words if w]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_special_ids_size_and_reload(corpus, tmp_path, model_type):
  tok = train_sentencepiece(corpus, tmp_path / "spm", 100, model_type=model_type)
  assert sorted(p.name for p in (tmp_path / "spm").iterdir()) == ["spm.model", "spm.vocab", "tokenizer_config.json"]
  assert tok.vocab_size == 100
  assert tok.vocab[:5] == list(SPECIAL_TOKENS)
  assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
  assert "<s>" not in tok.vocab and "</s>" not in tok.vocab  # no BOS/EOS
  assert not any(c.isupper() for piece in tok.vocab[5:] for c in piece)  # trained on lower-cased text
  again = load_tokenizer(tmp_path / "spm")
  assert (again.kind, again.lower_case, again.vocab) == ("sentencepiece", True, tok.vocab)
  text = "The walkers talked near the old river."
  assert again.encode(text) == tok.encode(text)
  assert again.encode(text) == again.encode(text.upper())  # lower-cased
  assert not set(again.encode("[CLS] [SEP] [MASK] [PAD]")) & {0, 2, 3, 4}  # never produced from text
  assert tok.unk_id not in again.encode(text)
  pieces = again.tokenize("walkers talked cleaners")
  assert _words_from_pieces(again, pieces, "\u2581") == ["walkers", "talked", "cleaners"]
  assert any(again.is_continuation(p) for p in pieces)


def test_sentencepiece_cased_and_from_lines(tmp_path):
  lines = _sentences(400, seed=3)
  tok = train_sentencepiece(None, tmp_path / "cased", 100, lower_case=False, lines=iter(lines))
  again = load_tokenizer(tmp_path / "cased")
  assert again.lower_case is False
  assert again.encode("The walker") != again.encode("the walker")
  assert any(c.isupper() for piece in again.vocab[5:] for c in piece)
  assert not set(again.encode("[CLS] [SEP] [MASK] [PAD]")) & {0, 2, 3, 4}  # control symbols, even cased
  assert tok.encode("The walker") == again.encode("The walker")


def test_wordpiece_vocab_file_and_tokenization(corpus, tmp_path):
  tok = train_wordpiece(corpus, tmp_path / "wp", 150)
  lines = (tmp_path / "wp" / "vocab.txt").read_text(encoding="utf-8").splitlines()
  assert lines[:5] == list(SPECIAL_TOKENS)
  assert len(lines) == tok.vocab_size == 150  # the corpus has more than enough to fill it
  assert len(set(lines)) == len(lines)
  assert any(t.startswith("##") and len(t) > 3 for t in lines)  # learnt continuations, not just the alphabet
  again = load_tokenizer(tmp_path / "wp")
  assert (again.kind, again.lower_case, again.vocab) == ("wordpiece", True, lines)
  text = "The Cleaners walked quickly. Singing?!"
  pieces = again.tokenize(text)
  assert "[UNK]" not in pieces and len(pieces) < len(text.replace(" ", ""))  # whole pieces, not characters
  assert _words_from_pieces(again, pieces, "##") == basic_tokenize(text, lower_case=True)
  assert again.encode_batch([text]) == [again.convert_tokens_to_ids(pieces)]


def test_wordpiece_cased_and_small_corpus(tmp_path):
  lines = _sentences(200, seed=5)
  tok = train_wordpiece(None, tmp_path / "wp", 2000, lower_case=False, lines=lines)
  assert tok.vocab_size < 2000  # fewer when the corpus has no more worth learning
  again = load_tokenizer(tmp_path / "wp")
  assert again.lower_case is False and again.vocab == tok.vocab
  assert "[UNK]" not in again.tokenize(lines[0])
  assert again.tokenize("The") != again.tokenize("the")


def test_wordpiece_alphabet_larger_than_vocab_size(tmp_path, corpus):
  with pytest.raises(InputError, match=r"part0\.txt.*characters alone need \d+ tokens, more than vocab_size=20"):
    train_wordpiece(corpus, tmp_path / "wp", 20)


def test_empty_corpus_and_missing_file(tmp_path, corpus):
  blank = tmp_path / "blank.txt"
  blank.write_text("\n  \n\t\n")
  for train in (train_wordpiece, train_sentencepiece):
    with pytest.raises(InputError, match=r"blank\.txt: the corpus holds no text"):
      train(blank, tmp_path / "out", 100)
    with pytest.raises(InputError, match=r"missing\.txt: no such corpus file"):
      train([corpus[0], tmp_path / "missing.txt"], tmp_path / "out", 100)
    with pytest.raises(InputError, match="the lines given: the corpus holds no text"):
      train(None, tmp_path / "out", 100, lines=["", "   "])
  assert not (tmp_path / "out").exists()


def test_bad_arguments(tmp_path, corpus):
  with pytest.raises(InputError, match="exactly one of files= .* or lines="):
    list(corpus_lines(corpus, ["a line"]))
  with pytest.raises(InputError, match="model_type is 'wordpiece'"):
    train_sentencepiece(corpus, tmp_path / "out", 100, model_type="wordpiece")
  with pytest.raises(InputError, match="vocab_size is 3; expected an integer of at least 6"):
    train_wordpiece(corpus, tmp_path / "out", 3)
  with pytest.raises(InputError, match="sets pad_id itself"):
    train_sentencepiece(corpus, tmp_path / "out", 100, pad_id=3)
  with pytest.raises(InputError, match=r"part0\.txt.*sentencepiece training failed.*Vocabulary size too high"):
    train_sentencepiece(corpus, tmp_path / "out", 5000)


def test_corpus_folder(tmp_path, corpus):
  folder = tmp_path / "texts"
  folder.mkdir()
  for f in corpus:
    (folder / f.name).write_bytes(f.read_bytes())
  (folder / ".hidden").write_text("SHOULD NOT BE READ\n")
  lines = list(corpus_lines(folder, lower_case=True))
  assert len(lines) == 600 and lines == [line.lower() for line in corpus_lines(corpus)]
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="empty: the corpus folder holds no files"):
    list(corpus_lines(tmp_path / "empty"))
