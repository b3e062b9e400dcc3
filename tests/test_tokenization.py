"""flaxbert.text.tokenization: the original WordPiece rules one by one (reference and fast path), the fast
path against the reference on hostile strings and on every code point, against transformers on real
text, sentencepiece models, saving/loading, and bad vocabularies."""
import json
import random
from pathlib import Path

import pytest
import sentencepiece

from flaxbert.errors import InputError
from flaxbert.text.tokenization import SPECIAL_TOKENS, Tokenizer, load_tokenizer
from flaxbert.text.wordpiece_rules import basic_tokenize, clean_text, words_are_independent


def write_vocab(directory: Path, tokens, name: str = "vocab.txt") -> Path:
  path = directory / name
  path.write_text("".join(t + "\n" for t in list(SPECIAL_TOKENS) + list(tokens)), encoding="utf-8")
  return path


def both_paths(tmp_path: Path, tokens, text: str, lower_case: bool = True) -> tuple[list[str], list[str]]:
  """(fast path, reference) wordpieces of `text` with a vocab of the special tokens plus `tokens`."""
  tok = load_tokenizer(write_vocab(tmp_path, tokens), lower_case=lower_case)
  return tok.tokenize(text), tok.reference_tokenize(text)


# --- the rules, one by one, on both paths ------------------------------------------------------


def test_clean_text_drops_nul_replacement_and_control_chars(tmp_path):
  text = "ab\x00c\ufffdd\x01e\x7ff\u200bg\u00adh\ufeffi"  # NUL, U+FFFD, Cc, DEL, ZWSP, soft hyphen, BOM
  assert clean_text(text) == "abcdefghi"
  assert both_paths(tmp_path, ["abcdefghi"], text) == (["abcdefghi"], ["abcdefghi"])


def test_private_use_and_unassigned_chars_are_kept(tmp_path):
  # The original drops only Cc and Cf; tokenizers (and transformers) drop every C* category.
  text = "a\ue000b c\U000f0001d e\U000e0080f"  # Co, Co, Cn
  assert clean_text(text) == text
  words = ["a\ue000b", "c\U000f0001d", "e\U000e0080f"]
  assert both_paths(tmp_path, words, text) == (words, words)


def test_whitespace_becomes_a_word_break(tmp_path):
  assert clean_text("a\tb\nc\rd\u3000e\xa0f\u2003g") == "a b c d e f g"
  text = "a\tb\nc\r\nd\u3000e\xa0f\u2003g"
  assert both_paths(tmp_path, list("abcdefg"), text) == (list("abcdefg"), list("abcdefg"))


def test_cjk_ideographs_are_split_out_but_kana_and_hangul_are_not(tmp_path):
  vocab = ["ab", "cd", "中", "文", "\uf900", "\u8c48", "\U0002b820", "ひらがな", "한국어"]
  text = "ab中文cd \uf900ab ひらがな한국어 ab\U0002b820cd"
  # A compatibility ideograph is split out too; uncased, NFD then maps U+F900 to U+8C48.
  expected = ["ab", "中", "文", "cd", "\u8c48", "ab", "[UNK]", "ab", "\U0002b820", "cd"]
  assert both_paths(tmp_path, vocab, text) == (expected, expected)
  expected[4] = "\uf900"
  assert both_paths(tmp_path, vocab, text, lower_case=False) == (expected, expected)
  # Kana and Hangul stay one word (here not in the vocab as a whole: [UNK]); alone they match, cased.
  assert both_paths(tmp_path, vocab, "ひらがな 한국어", lower_case=False) == (["ひらがな", "한국어"],) * 2
  # Uncased, NFD + mark stripping turns が into か and Hangul syllables into jamo, as in the original.
  assert both_paths(tmp_path, vocab + ["ひらかな"], "ひらがな 한국어") == (["ひらかな", "[UNK]"],) * 2


def test_accents_are_stripped_and_case_folded_only_when_uncased(tmp_path):
  vocab = ["hello", "nandu", "istanbul", "Héllo", "Ñandú", "İstanbul"]
  text = "Héllo Ñandú İstanbul"
  assert both_paths(tmp_path, vocab, text, lower_case=True) == (["hello", "nandu", "istanbul"],) * 2
  assert both_paths(tmp_path, vocab, text, lower_case=False) == (["Héllo", "Ñandú", "İstanbul"],) * 2
  # Decomposed input (e + U+0301) is the same as precomposed once uncased; cased, the mark stays.
  assert both_paths(tmp_path, vocab, "He\u0301llo", lower_case=True) == (["hello"],) * 2
  assert both_paths(tmp_path, vocab, "He\u0301llo", lower_case=False) == (["[UNK]"],) * 2


def test_final_sigma_follows_python_lower(tmp_path):
  vocab = ["οδος", "σ", "ς", "##ς", "##σ", "σο"]
  assert both_paths(tmp_path, vocab, "ΟΔΟΣ ΣΟ Σ", lower_case=True) == (["οδος", "σο", "σ"],) * 2


@pytest.mark.parametrize("char", list("$`^+<=>|~\\@#%&*") + ["«", "»", "¿", "—", "。", "、"])
def test_punctuation_is_split_off(tmp_path, char):
  assert both_paths(tmp_path, ["ab", "cd", char], f"ab{char}cd") == (["ab", char, "cd"],) * 2


def test_symbols_outside_ascii_and_p_categories_are_not_punctuation(tmp_path):
  for char in "€©°±":  # Sc, So, So, Sm: not split off
    assert basic_tokenize(f"ab{char}cd", lower_case=True) == [f"ab{char}cd"]
    assert both_paths(tmp_path, [f"ab{char}cd"], f"ab{char}cd") == ([f"ab{char}cd"],) * 2


def test_word_over_200_chars_is_unk(tmp_path):
  vocab = ["a", "##a", "b"]
  assert both_paths(tmp_path, vocab, "a" * 200 + " b") == (["a"] + ["##a"] * 199 + ["b"],) * 2
  assert both_paths(tmp_path, vocab, "a" * 201 + " b") == (["[UNK]", "b"],) * 2
  # Characters, not bytes: 200 two-byte characters still fit.
  assert both_paths(tmp_path, ["é", "##é"], "é" * 200, lower_case=False) == (["é"] + ["##é"] * 199,) * 2


def test_greedy_longest_match_first(tmp_path):
  vocab = ["un", "una", "##aff", "##able", "##ffa", "##ble"]
  assert both_paths(tmp_path, vocab, "unaffable") == (["una", "##ffa", "##ble"],) * 2
  # Greedy, not optimal: "una" is taken, "##ffable" cannot follow; "un" + "##aff" + "##able" is never tried.
  assert both_paths(tmp_path, ["un", "una", "##aff", "##able"], "unaffable") == (["[UNK]"],) * 2


def test_unknown_piece_makes_the_whole_word_unk(tmp_path):
  vocab = ["ab", "##c", "xy"]
  assert both_paths(tmp_path, vocab, "abc abz xy") == (["ab", "##c", "[UNK]", "xy"],) * 2


def test_special_token_text_is_not_special(tmp_path):
  # The original treats "[MASK]" in text as characters: '[' 'mask' ']' (transformers keeps it whole).
  assert both_paths(tmp_path, ["[", "]", "mask"], "a [MASK]") == (["[UNK]", "[", "mask", "]"],) * 2


# --- the fast path against the reference ---------------------------------------------------------

_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    " \t\r\n\u3000\xa0\u2028\u2029\x0b\x0c\x85\x1c",
    "".join(map(chr, range(0x300, 0x370))),  # combining marks
    "ÀÉÎÕÜÇÑİıßæøåÅ" + "ΑΒΓΔΣσςΟΩ" + "АБВГДабвгд" + "اللغة" + "हिन्दी" + "ひらがなカタカナ한국어",
    "中文字漢\uf900\u3400\U00020000\U0002b820\U0002b91f\U0002b920",
    "😀👍🏽👨‍👩‍👧\u200d\ufe0f",
    "\u200b\u200c\u200d\u2060\ufeff\u00ad\x00\ufffd\x01\x7f\x9f",
]
# Characters where Python's str.split() breaks words and the original does not, plus ones that
# tokenizers/transformers treat differently from the original (private use, final sigma, CJK Ext. E).
_UNSAFE = "\x0b\x0c\x1c\x1f\x85\u2028\u2029\ue000\U000f0000Σ\U0002b820\U0002b91f\u2e4f\u1ac0\U00013430"


def _random_char(rng: random.Random, unsafe: bool) -> str:
  if rng.random() < 0.04:  # any code point at all (any category, any plane), surrogates excepted
    cp = rng.randrange(0x110000 if rng.random() < 0.3 else 0x30000)
    return "?" if 0xD800 <= cp <= 0xDFFF else chr(cp)
  if unsafe and rng.random() < 0.05:
    return rng.choice(_UNSAFE)
  return rng.choice(rng.choice(_POOLS))


def _hostile_strings(n: int, seed: int, unsafe: bool) -> list[str]:
  rng = random.Random(seed)
  texts = []
  for _ in range(n):
    text = "".join(_random_char(rng, unsafe) for _ in range(rng.randint(0, 40)))
    if rng.random() < 0.05:
      text += " " + "x" * rng.choice([199, 200, 201, 202])
    texts.append(text)
  return texts


def _vocab_for(texts: list[str], lower_case: bool, seed: int) -> list[str]:
  """A vocab covering most (not all) characters of the texts' words, plus some longer pieces."""
  rng = random.Random(seed)
  tokens = set()
  for text in texts:
    for word in basic_tokenize(text, lower_case):
      if rng.random() < 0.9:
        tokens.update(word)
        tokens.update("##" + c for c in word)
      if len(word) > 2 and rng.random() < 0.3:
        start = rng.randrange(len(word) - 1)
        tokens.add(("##" if start else "") + word[start:start + rng.randint(2, 4)])
  return sorted(tokens - set(SPECIAL_TOKENS) - {""})


@pytest.mark.parametrize("lower_case", [True, False])
def test_fast_path_equals_reference_on_hostile_strings(tmp_path, lower_case):
  texts = _hostile_strings(2000, seed=int(lower_case), unsafe=False) + _hostile_strings(2000, 2, unsafe=True)
  tok = load_tokenizer(write_vocab(tmp_path, _vocab_for(texts, lower_case, seed=1)), lower_case=lower_case)
  expected = [tok.reference_tokenize(t) for t in texts]
  assert sum(len(e) for e in expected) > 20000 and any("[UNK]" in e for e in expected)
  assert [tok.tokenize(t) for t in texts] == expected
  assert tok.encode_batch(texts) == [tok.convert_tokens_to_ids(e) for e in expected]
  # Both ways are exercised: word by word, and whole texts where split() and the original disagree.
  assert 1000 < sum(map(words_are_independent, texts)) < len(texts)


@pytest.mark.parametrize("lower_case", [True, False])
def test_word_by_word_equals_the_rules_at_every_code_point(tmp_path, lower_case):
  """Each code point of the BMP, every 5th of planes 1-2 and the tags block of plane 14, inside a
  word, alone, and between words: word by word tokenization splits where the original does."""
  tok = load_tokenizer(write_vocab(tmp_path, ["a", "b", "##b", "c"]), lower_case=lower_case)
  texts = [f"a{chr(cp)}b {chr(cp)} c" for cp in [*range(0x10000), *range(0x10000, 0x30000, 5), *range(0xE0000, 0xE0080)]
           if not 0xD800 <= cp <= 0xDFFF]
  got, expected = tok.encode_batch(texts), [tok.convert_tokens_to_ids(tok.reference_tokenize(t)) for t in texts]
  differ = [f"U+{ord(t[1]):04X}" for t, g, e in zip(texts, got, expected) if g != e]
  assert not differ, f"word-by-word tokenization departs from the rules at {' '.join(differ[:50])}"


# --- the Tokenizer interface, WordPiece ----------------------------------------------------------


@pytest.fixture
def wordpiece(tmp_path) -> Tokenizer:
  return load_tokenizer(write_vocab(tmp_path, ["the", "cat", "sat", "un", "##aff", "##able", ".", "a", "##b"]))


def test_wordpiece_interface(wordpiece):
  tok = wordpiece
  assert (tok.kind, tok.lower_case, tok.vocab_size) == ("wordpiece", True, 14)
  assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
  assert tok.vocab[:6] == [*SPECIAL_TOKENS, "the"]
  tokens = tok.tokenize("The cat sat unaffable, zz.")
  assert tokens == ["the", "cat", "sat", "un", "##aff", "##able", "[UNK]", "[UNK]", "."]
  assert tok.encode("The cat sat unaffable, zz.") == tok.convert_tokens_to_ids(tokens) == [5, 6, 7, 8, 9, 10, 1, 1, 11]
  assert tok.convert_ids_to_tokens(tok.encode("the cat")) == ["the", "cat"]
  assert tok.convert_tokens_to_ids(["cat", "nope"]) == [6, 1]
  assert tok.encode_batch(["the cat", "", "unaffable"]) == [[5, 6], [], [8, 9, 10]]
  assert tok.encode_batch([]) == []
  assert [tok.is_continuation(t) for t in ["un", "##aff", "[CLS]", "#"]] == [False, True, False, False]
  with pytest.raises(InputError, match="token id 14 is out of range"):
    tok.convert_ids_to_tokens([3, 14])
  with pytest.raises(InputError, match="text #1 is a bytes"):
    tok.encode_batch(["ok", b"bytes"])


def test_wordpiece_encode_batch_mixes_word_by_word_and_whole_texts(wordpiece):
  # "\x0b" is whitespace to str.split() but a deleted control character to the original: "thecat".
  texts = ["the cat", "the\x0bcat the cat", "the \ue000cat\nthe cat", "ΣΣ cat"]
  assert not words_are_independent(texts[1]) and words_are_independent(texts[2])
  expected = [[5, 6], [1, 5, 6], [5, 1, 5, 6], [1, 6]]
  assert wordpiece.encode_batch(texts) == [wordpiece.encode(t) for t in texts] == expected


def test_save_and_reload_keeps_casing(tmp_path):
  tok = load_tokenizer(write_vocab(tmp_path, ["Cat", "cat"]), lower_case=False)
  saved = tok.save(tmp_path / "saved")
  assert sorted(p.name for p in saved.iterdir()) == ["tokenizer_config.json", "vocab.txt"]
  assert json.loads((saved / "tokenizer_config.json").read_text()) == {"kind": "wordpiece", "lower_case": False}
  again = load_tokenizer(saved)
  assert (again.kind, again.lower_case, again.vocab) == ("wordpiece", False, tok.vocab)
  assert again.tokenize("Cat cat") == ["Cat", "cat"]
  with pytest.raises(InputError, match="says lower_case=false"):
    load_tokenizer(saved, lower_case=True)


def test_hf_style_folder_uses_do_lower_case(tmp_path):
  write_vocab(tmp_path, ["Cat", "cat"])
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "tokenizer_class": "Bert"}))
  assert load_tokenizer(tmp_path).tokenize("Cat") == ["Cat"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
  assert load_tokenizer(tmp_path).tokenize("Cat") == ["cat"]


# --- sentencepiece -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
  directory = tmp_path_factory.mktemp("spm")
  rng = random.Random(0)
  syllables = "ka to ri mu sen dal or ing ed pre un ble wa lo".split()
  words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(80)]
  words += "the river ran walkers talked about bridges".split()
  lines = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(400)]
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=str(directory / "m"), vocab_size=60, pad_id=0, pad_piece="[PAD]",
      unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"],
      minloglevel=2, num_threads=1)
  return directory / "m.model"


def test_sentencepiece_interface(spm_model, tmp_path):
  tok = load_tokenizer(spm_model)
  assert (tok.kind, tok.lower_case, tok.vocab_size) == ("sentencepiece", True, 60)
  assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
  ids = tok.encode("the river ran")
  assert tok.encode("The RIVER ran") == ids == tok.convert_tokens_to_ids(tok.tokenize("the river ran"))
  pieces = tok.tokenize("walkers talked about bridges")
  assert "".join(pieces).replace("\u2581", " ").strip() == "walkers talked about bridges"
  flags = [tok.is_continuation(p) for p in pieces]
  assert flags.count(False) == 4 and flags[0] is False  # one word start per word
  assert not any(tok.is_continuation(s) for s in SPECIAL_TOKENS)
  assert tok.encode_batch(["the river", "RAN"]) == [tok.encode("the river"), tok.encode("ran")]
  assert 4 not in tok.encode("[MASK]")  # control symbols never come from text
  cased = load_tokenizer(spm_model, lower_case=False)
  assert cased.encode("The") != cased.encode("the")
  saved = load_tokenizer(cased.save(tmp_path / "saved"))
  assert (saved.kind, saved.lower_case, saved.vocab) == ("sentencepiece", False, cased.vocab)
  assert (tmp_path / "saved" / "spm.model").read_bytes() == spm_model.read_bytes()


def test_folder_with_one_model_file(spm_model, tmp_path):
  (tmp_path / "x.model").write_bytes(spm_model.read_bytes())
  assert load_tokenizer(tmp_path).kind == "sentencepiece"
  (tmp_path / "y.model").write_bytes(spm_model.read_bytes())
  with pytest.raises(InputError, match="several .model files"):
    load_tokenizer(tmp_path)


def test_sentencepiece_without_bert_specials_is_an_error(tmp_path):
  sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g"] * 50), minloglevel=2,
                                           model_prefix=str(tmp_path / "plain"), vocab_size=12, num_threads=1,
                                           unk_piece="[UNK]")
  with pytest.raises(InputError, match=r"plain\.model.*\[PAD\] \[CLS\] \[SEP\] \[MASK\]"):
    load_tokenizer(tmp_path / "plain.model")


# --- bad input -----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
  with pytest.raises(InputError, match="nope.txt: no such file or folder"):
    load_tokenizer(tmp_path / "nope.txt")


def test_empty_vocab(tmp_path):
  (tmp_path / "vocab.txt").write_text("")
  with pytest.raises(InputError, match=r"vocab\.txt: the vocabulary is empty"):
    load_tokenizer(tmp_path / "vocab.txt")


def test_duplicate_tokens_name_their_lines(tmp_path):
  path = write_vocab(tmp_path, ["cat", "dog", "cat", "[UNK]"])
  with pytest.raises(InputError, match=r"vocab\.txt: duplicate tokens: '\[UNK\]' on lines 2, 9; 'cat' on lines 6, 8"):
    load_tokenizer(path)


def test_missing_special_tokens_are_named(tmp_path):
  (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[SEP]\ncat\n")
  with pytest.raises(InputError, match=r"vocab\.txt: the vocabulary lacks the special token\(s\) \[CLS\] \[MASK\]"):
    load_tokenizer(tmp_path / "vocab.txt")


def test_blank_lines_not_utf8_and_spm_vocab_files(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("[PAD]\n[UNK]\n\n[CLS]\n[SEP]\n[MASK]\n")
  with pytest.raises(InputError, match=r"empty token on line\(s\) 3"):
    load_tokenizer(path)
  path.write_bytes(b"[PAD]\n[UNK]\n\xff\xfe\n")
  with pytest.raises(InputError, match="not UTF-8"):
    load_tokenizer(path)
  path.write_text("[PAD]\t0\n[UNK]\t0\n")
  with pytest.raises(InputError, match="sentencepiece .vocab"):
    load_tokenizer(path)


def test_bad_folders_and_configs(tmp_path):
  with pytest.raises(InputError, match="no vocab.txt, tokenizer.json or a sentencepiece .model in this folder"):
    load_tokenizer(tmp_path)
  (tmp_path / "spm.model").write_bytes(b"not a model")
  with pytest.raises(InputError, match=r"spm\.model: not a sentencepiece model"):
    load_tokenizer(tmp_path)
  write_vocab(tmp_path, [])
  with pytest.raises(InputError, match="holds both vocab.txt and spm.model"):
    load_tokenizer(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text('{"kind": "wordpiece", "lower_case": false}')
  assert load_tokenizer(tmp_path).kind == "wordpiece"
  (tmp_path / "tokenizer_config.json").write_text('{"kind": "bpe"}')
  with pytest.raises(InputError, match=r"tokenizer_config\.json: \"kind\" is 'bpe'"):
    load_tokenizer(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text('{"lower_case": "yes"}')
  with pytest.raises(InputError, match=r"tokenizer_config\.json: \"lower_case\" is 'yes'"):
    load_tokenizer(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text("{not json")
  with pytest.raises(InputError, match=r"tokenizer_config\.json: unreadable"):
    load_tokenizer(tmp_path)
  (tmp_path / "vocab.txt").unlink()
  (tmp_path / "tokenizer_config.json").write_text('{"kind": "wordpiece"}')
  with pytest.raises(InputError, match="says kind \"wordpiece\" but there is no vocab.txt"):
    load_tokenizer(tmp_path)


def test_decode_drops_specials_and_joins_pieces(wordpiece, spm_model):
  ids = [wordpiece.cls_id, *wordpiece.encode("The cat sat unaffable."), wordpiece.sep_id, wordpiece.pad_id]
  assert wordpiece.decode(ids) == "the cat sat unaffable."  # "##" glued, no space before "."
  assert wordpiece.decode(iter([5, 6])) == "the cat" and wordpiece.decode([]) == ""
  with pytest.raises(InputError, match="token id 99 is out of range"):
    wordpiece.decode([5, 99])
  spm = load_tokenizer(spm_model)
  text = "the river ran about bridges"
  assert spm.decode([spm.cls_id, *spm.encode(text), spm.sep_id, spm.pad_id]) == text


def test_a_transformers_tokenizer_json_gives_the_same_wordpiece_tokenizer(tmp_path):
  """transformers 5 saves tokenizer.json (no vocab.txt): its WordPiece vocabulary and casing are read."""
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", ","]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  want = load_tokenizer(tmp_path / "vocab.txt", lower_case=False)
  folder = tmp_path / "hf"
  folder.mkdir()
  model = {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
           "vocab": {t: i for i, t in reversed(list(enumerate(vocab)))}}
  (folder / "tokenizer.json").write_text(json.dumps({"normalizer": {"type": "BertNormalizer", "lowercase": False},
                                                     "model": model}))
  got = load_tokenizer(folder)
  assert not got.lower_case and got.encode("Hello worlds, hello") == want.encode("Hello worlds, hello")
  model["vocab"]["gap"] = 20
  (folder / "tokenizer.json").write_text(json.dumps({"model": model}))
  with pytest.raises(InputError, match=r"tokenizer.json: the WordPiece ids are not 0…9 without gaps"):
    load_tokenizer(folder)
  (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}))
  with pytest.raises(InputError, match=r"tokenizer.json: a BPE tokenizer; expected BERT's WordPiece"):
    load_tokenizer(folder)
