"""Training vocabularies from a corpus: sentencepiece (unigram or BPE) or BERT WordPiece.

Both write a folder that `flaxbert.text.tokenization.load_tokenizer` reads back without being told the
casing (a tokenizer_config.json goes with the vocabulary), and both put BERT's special tokens first:
[PAD] [UNK] [CLS] [SEP] [MASK] are ids 0..4.

  train_sentencepiece  spm.model + spm.vocab; [PAD] and [UNK] are sentencepiece's pad and unk
                       pieces, [CLS] [SEP] [MASK] control symbols (never produced from text, as in
                       the original BERT a literal "[MASK]" in text is just characters); no BOS/EOS.
  train_wordpiece      vocab.txt, learnt by tokenizers' WordPieceTrainer behind the same BERT
                       normalizer and pre-tokenizer that tokenize with it, '##' continuations.

The corpus is files (or folders of files), one sentence or paragraph a line, or an iterable of
lines; blank lines are skipped. A missing file or a corpus without text stops with an InputError.
"""
import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, trainers

from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.text.tokenization import (CLS, MASK, PAD, SEP, SPECIAL_TOKENS, SentencePieceTokenizer, Tokenizer,
                                        WordPieceTokenizer, load_tokenizer)
from flaxbert.text.wordpiece_rules import MAX_INPUT_CHARS_PER_WORD, UNK

MODEL_TYPES = ("unigram", "bpe")
# What train_sentencepiece sets itself; `options` may not override these.
_FIXED_SPM_OPTIONS = frozenset({"pad_id", "unk_id", "bos_id", "eos_id", "pad_piece", "unk_piece", "control_symbols",
                                "user_defined_symbols", "model_prefix", "model_type", "vocab_size",
                                "sentence_iterator", "input", "model_writer"})

Corpus = str | os.PathLike | Sequence[str | os.PathLike]


def corpus_files(files: Corpus) -> list[Path]:
  """The files of a corpus: each path itself, or for a folder the files in it (recursively, sorted)."""
  paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
  if not paths:
    raise InputError("the corpus is an empty list of files; expected at least one text file")
  out = []
  for path in map(storage.path, paths):
    if path.is_dir():
      found = [p for rel, p in storage.files(path) if not p.name.startswith(".")]
      if not found:
        raise InputError(f"{path}: the corpus folder holds no files")
      out.extend(found)
    elif path.is_file():
      out.append(path)
    else:
      raise InputError(f"{path}: no such corpus file or folder")
  return out


def _file_lines(paths: list[Path]) -> Iterator[str]:
  for path in paths:
    try:
      with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
          line = line.strip()
          if line:
            yield line
    except OSError as e:
      raise InputError(f"{path}: cannot read the corpus file ({e.strerror or e})") from None


def _describe(paths: list[Path]) -> str:
  names = ", ".join(map(str, paths[:5]))
  return names + (f" (and {len(paths) - 5} more files)" if len(paths) > 5 else "")


def _where(files: Corpus | None) -> str:
  """The corpus, for an error message."""
  return "the lines given" if files is None else _describe(corpus_files(files))


def corpus_lines(files: Corpus | None = None, lines: Iterable[str] | None = None,
                 lower_case: bool = False) -> Iterator[str]:
  """The non-blank lines of the corpus (exactly one of `files`, `lines`), lower-cased if asked.

  Raises InputError up front when a file is missing or the corpus holds no text at all.
  """
  if (files is None) == (lines is None):
    raise InputError("give the corpus as exactly one of files= (paths) or lines= (an iterable of text lines)")
  if files is not None:
    paths = corpus_files(files)
    where = _describe(paths)
    stream = _file_lines(paths)
  else:
    where = "the lines given"
    stream = (line.strip() for line in lines if isinstance(line, str) and line.strip())
  first = next(stream, None)
  if first is None:
    raise InputError(f"{where}: the corpus holds no text (every line is blank); expected text, one sentence a line")
  stream = itertools.chain([first], stream)
  return (line.lower() for line in stream) if lower_case else stream


def _check_size(vocab_size: int, least: int) -> None:
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < least:
    raise InputError(f"vocab_size is {vocab_size!r}; expected an integer of at least {least}")


def train_sentencepiece(files: Corpus | None, output_dir: str | os.PathLike, vocab_size: int,
                        model_type: str = "unigram", lower_case: bool = True, *,
                        lines: Iterable[str] | None = None, character_coverage: float = 0.9995,
                        num_threads: int | None = None, **options) -> Tokenizer:
  """Trains a sentencepiece model of exactly `vocab_size` pieces; writes output_dir/spm.model,
  spm.vocab and tokenizer_config.json, and returns the tokenizer.

  lower_case: the corpus is lower-cased for training, and the tokenizer lower-cases its input.
  options: further sentencepiece trainer flags (input_sentence_size, max_sentence_length, ...).
  """
  if model_type not in MODEL_TYPES:
    raise InputError(f"model_type is {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
  _check_size(vocab_size, len(SPECIAL_TOKENS) + 1)
  fixed = sorted(_FIXED_SPM_OPTIONS & set(options))
  if fixed:
    raise InputError(f"train_sentencepiece sets {', '.join(fixed)} itself (BERT's special tokens are ids 0..4)")
  options.setdefault("minloglevel", 2)  # sentencepiece's INFO log is long
  stream = corpus_lines(files, lines, lower_case)
  output_dir = Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=stream, model_prefix=str(output_dir / "spm"), model_type=model_type,
        vocab_size=vocab_size, character_coverage=character_coverage,
        num_threads=num_threads or os.cpu_count() or 1,
        pad_id=0, pad_piece=PAD, unk_id=1, unk_piece=UNK, bos_id=-1, eos_id=-1,
        control_symbols=[CLS, SEP, MASK], **options)
  except RuntimeError as e:  # e.g. "Vocabulary size is too high (8000). Please set it to a value <= 1234."
    raise InputError(f"{_where(files)}: sentencepiece training failed: {e}") from None
  model_file = output_dir / "spm.model"
  SentencePieceTokenizer(model_file.read_bytes(), lower_case, source=str(model_file)).save(output_dir)
  return load_tokenizer(output_dir)  # read back, as users will


def train_wordpiece(files: Corpus | None, output_dir: str | os.PathLike, vocab_size: int,
                    lower_case: bool = True, *, lines: Iterable[str] | None = None, min_frequency: int = 2,
                    limit_alphabet: int = 1000) -> Tokenizer:
  """Trains a BERT WordPiece vocabulary of at most `vocab_size` tokens (fewer when the corpus has no more
  worth learning); writes output_dir/vocab.txt ([PAD] [UNK] [CLS] [SEP] [MASK], then the learnt tokens)
  and tokenizer_config.json, and returns the tokenizer.

  min_frequency: the least count of a pair worth merging; limit_alphabet: the most distinct characters kept.
  """
  _check_size(vocab_size, len(SPECIAL_TOKENS) + 1)
  stream = corpus_lines(files, lines)
  model = tokenizers.Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##",
                                                max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
  model.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=lower_case, lowercase=lower_case)
  model.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), limit_alphabet=limit_alphabet,
                                      continuing_subword_prefix="##", show_progress=False)
  model.train_from_iterator(stream, trainer=trainer)
  by_id = sorted(model.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
  vocab = [token for token, _ in by_id]
  if [i for _, i in by_id] != list(range(len(vocab))) or tuple(vocab[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
    raise RuntimeError(f"tokenizers' WordPieceTrainer returned an unexpected vocabulary: {vocab[:10]} ...")
  if len(vocab) > vocab_size:  # the trainer always keeps the whole alphabet (and its '##' forms)
    raise InputError(f"{_where(files)}: the corpus' characters alone need {len(vocab)} tokens, more than vocab_size="
                     f"{vocab_size}; raise vocab_size or lower limit_alphabet (now {limit_alphabet})")
  WordPieceTokenizer(vocab, lower_case, source="the trained vocabulary").save(output_dir)
  return load_tokenizer(output_dir)  # read back, as users will
