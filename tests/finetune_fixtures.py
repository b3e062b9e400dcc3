"""A tiny pretrained BERT on disk (HF format + vocab.txt) and generated task data for fine-tuning tests."""
import json
from pathlib import Path

import numpy as np

from corpus_fixtures import SPECIALS, STEMS, SUFFIXES
from flaxbert.interop.pretrained import save_pretrained
from flaxbert.models.config import BertConfig
from flaxbert.models.pretraining import build_model, init_params

POSITIVE, NEGATIVE = STEMS[:10], STEMS[10:20]
NEUTRAL = STEMS[20:]
WORDS = SPECIALS + [".", ",", "?", "-"] + STEMS + SUFFIXES


def tiny_bert_config(vocab_size: int) -> BertConfig:
  return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=128)


def write_pretrained(directory: Path, fmt: str = "hf", heads: bool = True) -> Path:
  """A randomly initialised tiny BERT with its vocab.txt, in `fmt` (hf | flaxbert | tf1)."""
  vocab = directory.parent / f"{directory.name}-vocab.txt"
  vocab.write_text("\n".join(WORDS) + "\n")
  model = build_model(tiny_bert_config(len(WORDS)), heads=heads)
  save_pretrained(directory, model, init_params(model, seed=1), format=fmt, vocab=vocab)
  return directory


def labelled_sentence(rng: np.random.RandomState, label: int) -> str:
  cue = (POSITIVE if label else NEGATIVE)[rng.randint(10)]
  words = [NEUTRAL[rng.randint(len(NEUTRAL))] for _ in range(rng.randint(2, 8))]
  words.insert(rng.randint(len(words) + 1), cue)
  return " ".join(words) + " ."


def write_sst2(path: Path, n: int, seed: int) -> Path:
  rng = np.random.RandomState(seed)
  lines = ["sentence\tlabel"]
  for _ in range(n):
    label = rng.randint(2)
    lines.append(f"{labelled_sentence(rng, label)}\t{label}")
  path.write_text("\n".join(lines) + "\n")
  return path


def write_mrpc(path: Path, n: int, seed: int) -> Path:
  """Paraphrase iff both sentences carry a cue of the same polarity."""
  rng = np.random.RandomState(seed)
  lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
  for i in range(n):
    a, b = rng.randint(2), rng.randint(2)
    lines.append(f"{int(a == b)}\t{2 * i}\t{2 * i + 1}\t{labelled_sentence(rng, a)}\t{labelled_sentence(rng, b)}")
  path.write_text("\n".join(lines) + "\n")
  return path


def write_stsb(path: Path, n: int, seed: int, additive: bool = False) -> Path:
  """Scores 0–5: high for two sentences of the same polarity (or, additive, 2.5 per positive sentence)."""
  rng = np.random.RandomState(seed)
  lines = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
  for i in range(n):
    a, b = rng.randint(2), rng.randint(2)
    score = 2.4 * (a + b) + 0.2 * rng.rand() if additive else (4.0 + rng.rand() if a == b else rng.rand())
    lines.append(f"{i}\tmain-captions\tMSRvid\t2012test\t{i}\tnone\tnone\t{labelled_sentence(rng, a)}\t"
                 f"{labelled_sentence(rng, b)}\t{score:.3f}")
  path.write_text("\n".join(lines) + "\n")
  return path


def write_conll(path: Path, n: int, seed: int) -> Path:
  """Entities: a POSITIVE word starts a PER (followed by 0–1 ## continuation word as I-PER), NEGATIVE is LOC."""
  rng = np.random.RandomState(seed)
  blocks = []
  for _ in range(n):
    rows = []
    for _ in range(rng.randint(3, 9)):
      r = rng.rand()
      if r < 0.2:
        rows.append(f"{POSITIVE[rng.randint(10)]}\tB-PER")
        if rng.rand() < 0.5:
          rows.append(f"{POSITIVE[rng.randint(10)]}\tI-PER")
      elif r < 0.35:
        rows.append(f"{NEGATIVE[rng.randint(10)]}\tB-LOC")
      else:
        rows.append(f"{NEUTRAL[rng.randint(len(NEUTRAL))]}\tO")
    blocks.append("\n".join(rows))
  path.write_text("\n\n".join(blocks) + "\n")
  return path


def write_squad(path: Path, n: int, seed: int, v2: bool = False) -> Path:
  """Questions ask for the word after the cue `?`-marked word: context words are NEUTRAL, the answer a POSITIVE word."""
  rng = np.random.RandomState(seed)
  data = []
  for a in range(n):
    words = [NEUTRAL[rng.randint(len(NEUTRAL))] for _ in range(rng.randint(6, 30))]
    answer = POSITIVE[rng.randint(10)]
    at = rng.randint(len(words))
    words.insert(at, answer)
    context = " ".join(words)
    start = len(" ".join(words[:at])) + (1 if at else 0)
    qas = [{"id": f"q{a}", "question": f"{NEUTRAL[0]} {NEUTRAL[1]} ?",
            "answers": [{"text": answer, "answer_start": start}]}]
    if v2:
      qas[0]["is_impossible"] = False
      if rng.rand() < 0.3:
        qas.append({"id": f"q{a}x", "question": f"{NEUTRAL[2]} ?", "answers": [], "is_impossible": True})
    data.append({"title": f"t{a}", "paragraphs": [{"context": context, "qas": qas}]})
  path.write_text(json.dumps({"version": "v2.0" if v2 else "1.1", "data": data}))
  return path


def write_summaries(path: Path, n: int, seed: int) -> Path:
  """BBC-style JSONL (headline paragraph, then sentences); the reference summary is the sentences
  that carry a POSITIVE cue word, concatenated as the BBC summaries are (no space after a stop)."""
  rng = np.random.RandomState(seed)
  rows = []
  for i in range(n):
    sentences, summary = [], []
    for _ in range(rng.randint(4, 8)):
      positive = rng.rand() < 0.35
      s = labelled_sentence(rng, int(positive)).replace(" .", ".")
      sentences.append(s[0].upper() + s[1:])
      if positive:
        summary.append(sentences[-1])
    if not summary:
      summary.append(sentences[0])
    article = f"Headline {i}\n\n" + " ".join(sentences)
    rows.append({"id": f"d{i}", "split": "train", "duplicate_of": None, "article": article, "summary": "".join(summary)})
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


TOPICS = {"sport": STEMS[30:33], "politics": STEMS[40:43], "tech": STEMS[50:53]}  # each class's cue words


def topic_rows(n: int, seed: int, multi_label: bool = False) -> list[dict]:
  """{"id", "text", "topic"} rows: a text carries a cue word of its topic (multi-label: of one or two
  topics, "topic" a list) among filler words, a comma in some (CSV quoting)."""
  rng = np.random.RandomState(seed)
  names = list(TOPICS)
  rows = []
  for i in range(n):
    topics = sorted(set(rng.choice(names, size=1 + (multi_label and rng.rand() < 0.4), replace=False)))
    words = [STEMS[60 + rng.randint(60)] for _ in range(rng.randint(2, 7))]
    for t in topics:
      words.insert(rng.randint(len(words) + 1), TOPICS[t][rng.randint(3)])
    if rng.rand() < 0.3:
      words.insert(1, ",")
    rows.append({"id": f"r{i}", "text": " ".join(words).replace(" ,", ","), "topic": topics if multi_label else topics[0]})
  return rows


def write_rows(path: Path, rows: list[dict], label_delimiter: str | None = None) -> Path:
  """rows as .csv / .tsv (a header row) or .jsonl; list labels joined by label_delimiter, else JSON text."""
  import csv  # pylint: disable=import-outside-toplevel
  if path.suffix == ".jsonl":
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
  cell = lambda v: v if isinstance(v, str) else (label_delimiter.join(v) if label_delimiter else json.dumps(v))  # noqa: E731
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
    writer.writerow(list(rows[0]))
    for r in rows:
      writer.writerow([cell(v) for v in r.values()])
  return path


def tiny_finetune_config(task: str, bert: Path, train: Path, dev: Path, **overrides):
  """configs/finetune.py's TASK,tiny from `bert` on train/dev files: 8 epochs at lr 3e-3, no dropout."""
  from configs import finetune as finetune_config  # pylint: disable=import-outside-toplevel
  c = finetune_config.get_config(f"{task},tiny")
  c.init, c.train_path, c.eval_path = str(bert), str(train), str(dev)
  c.optim.learning_rate, c.num_epochs, c.optim.warmup_proportion = 3e-3, 8.0, 0.0
  c.eval_every_epoch = False
  dropout(c, 0.0)
  for key, value in overrides.items():
    c[key] = value
  return c


def dropout(c, rate: float):
  c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = rate
  return c
