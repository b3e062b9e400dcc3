"""Task data from TFDS datasets already on this machine: `tfds:NAME[/CONFIG]:SPLIT` as a path.

e.g. `--config.train_path=tfds:glue/sst2:train --config.eval_path=tfds:glue/sst2:validation`,
`tfds:conll2003:train` (NER), `tfds:squad/v1.1:validation`. Nothing is downloaded
(`download=False`): a dataset that is not prepared under the TFDS data dir is an error saying so.
Records come out as the file readers' (flaxbert.finetune.tasks.readers / squad), so featurization and
scoring do not know where the data came from. Class labels keep the task's label names where the
TFDS names match them (MNLI, QNLI, RTE) and are the class index otherwise (SST-2's
negative/positive are GLUE's 0/1); label -1 (GLUE test splits) is no label.
"""
import logging

from flaxbert.errors import InputError
from flaxbert.finetune.tasks.readers import TaggedExample, TextExample

log = logging.getLogger("flaxbert")
PREFIX = "tfds:"
# (text_a, text_b) feature names, first match wins: the pairs before the single texts, since a
# pair dataset can also hold a single-text name (QNLI: question + sentence).
_TEXT_FIELDS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                ("question", "sentence"), ("sentence", None), ("text", None))


def is_tfds(path: str | None) -> bool:
  return bool(path) and str(path).startswith(PREFIX)


def _load(path: str):
  """(examples as numpy dicts, features spec) of `tfds:NAME:SPLIT`."""
  spec = path[len(PREFIX):]
  name, _, split = spec.rpartition(":")
  if not name or not split:
    raise InputError(f"{path}: expected tfds:NAME[/CONFIG]:SPLIT, e.g. tfds:glue/sst2:train")
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    builder = tfds.builder(name)
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except Exception as e:  # pylint: disable=broad-except  # TFDS raises many types for "not prepared"
    raise InputError(f"{path}: TFDS dataset {name!r} split {split!r} is not available locally "
                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); prepare it with "
                     f"`tfds build {name}` where the data can be reached") from None
  return tfds.as_numpy(ds), builder.info.features


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_text_pairs(path: str, labels: list[str] | None, label_field: str = "label") -> list[TextExample]:
  """Sentence or sentence-pair classification/regression examples from a TFDS split."""
  rows, features = _load(path)
  names = set(features.keys())
  fields = next(((a, b) for a, b in _TEXT_FIELDS if a in names and (b is None or b in names)), None)
  if fields is None:
    raise InputError(f"{path}: no text features among {sorted(names)}; expected one of {_TEXT_FIELDS}")
  label_feature = features[label_field] if label_field in names else None
  class_names = getattr(label_feature, "names", None)
  out = []
  for i, row in enumerate(rows):
    label = None
    if label_feature is not None:
      value = row[label_field]
      if class_names is None:
        label = float(value)
      elif int(value) >= 0:
        name = class_names[int(value)]
        label = name if labels and name in labels else str(int(value))
    guid = str(row["idx"]) if "idx" in row else f"{i}"
    out.append(TextExample(guid, _text(row[fields[0]]), _text(row[fields[1]]) if fields[1] else None, label,
                           f"{path}:{i + 1}"))
  return out


def read_tagged(path: str, tag_field: str = "ner") -> list[TaggedExample]:
  """NER sentences (tokens + ClassLabel tags: conll2003's "ner") from a TFDS split."""
  rows, features = _load(path)
  if "tokens" not in features.keys() or tag_field not in features.keys():
    raise InputError(f"{path}: expected 'tokens' and {tag_field!r} features, got {sorted(features.keys())}")
  names = features[tag_field].feature.names
  out = []
  for i, row in enumerate(rows):
    words, tags = tuple(_text(t) for t in row["tokens"]), tuple(names[int(t)] for t in row[tag_field])
    if len(words) != len(tags):
      raise InputError(f"{path}:{i + 1}: {len(words)} tokens but {len(tags)} {tag_field} tags")
    out.append(TaggedExample(str(i), words, tags, f"{path}:{i + 1}"))
  return out


def squad_json(path: str) -> dict:
  """A TFDS SQuAD split as SQuAD JSON (so the JSON reader's checks apply): {"data": [...]}."""
  rows, _ = _load(path)
  articles: dict[str, dict[str, list]] = {}
  for row in rows:
    answers = row["answers"]
    qa = {"id": _text(row["id"]), "question": _text(row["question"]),
          "answers": [{"text": _text(t), "answer_start": int(s)}
                      for t, s in zip(answers["text"], answers["answer_start"])]}
    if "is_impossible" in row:
      qa["is_impossible"] = bool(row["is_impossible"])
    title = _text(row.get("title", b""))
    articles.setdefault(title, {}).setdefault(_text(row["context"]), []).append(qa)
  return {"data": [{"title": title, "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs.items()]}
                   for title, paragraphs in articles.items()]}
