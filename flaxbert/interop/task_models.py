"""Fine-tuned BERTs ⇄ transformers' task classes, losslessly.

  flaxbert head (models.task_heads)   transformers class               head tensors
  sequence (classification, regression) BertForSequenceClassification  classifier.weight/bias
  token (NER)                          BertForTokenClassification       classifier.weight/bias
  span (extractive QA)                 BertForQuestionAnswering         qa_outputs.weight/bias
  embedding (sentence similarity)      BertModel (the encoder; the pooling is flaxbert's setting)

The encoder's tensors use the one name map (flaxbert.interop.names); only the sequence head has
the pooler, as in transformers. config.json carries `architectures`, `id2label`/`label2id`,
`problem_type` (single_label_classification, multi_label_classification, regression) and, for a
multi-label model, the decision threshold chosen on dev data (`multi_label_threshold`, which
transformers keeps as an attribute and ignores); the tokenizer goes along as vocab.txt and
transformers' tokenizer_config.json. The extractive summarizer's sentence head (inter-sentence
layers) has no transformers class and is refused.
"""
import dataclasses
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.errors import InputError
from flaxbert.interop import hf, names
from flaxbert.interop.tensors import check_weights, export_tensors, normalize_hf_keys
from flaxbert.models.config import BertConfig, read_json, write_json
from flaxbert.models.task_heads import BertForTask
from flaxbert.training.state import boxed_param_shapes

CLASSES = {"sequence": "BertForSequenceClassification", "token": "BertForTokenClassification",
           "span": "BertForQuestionAnswering"}
_HEAD_MODULE = {"sequence": "classifier", "token": "classifier", "span": "qa_outputs"}
THRESHOLD_KEY = "multi_label_threshold"


@dataclasses.dataclass
class TaskModel:
  """A fine-tuned model read from a transformers folder."""
  config: BertConfig
  head: str
  params: dict  # BertForTask's tree: {"bert": …, "classifier" | "qa_outputs": …}
  labels: list[str]  # by class id ([] for QA)
  problem_type: str | None
  threshold: float | None  # multi-label decision threshold, if recorded


def head_of(path: str | os.PathLike) -> str | None:
  """The flaxbert head of a transformers folder saved from one of CLASSES, else None."""
  path = Path(path)
  if not (path.is_dir() and hf.is_hf_dir(path)):
    return None
  architectures = read_json(path / "config.json").get("architectures") or []
  return next((h for h, c in CLASSES.items() if c in architectures), None)


def _entries(config: BertConfig, head: str) -> list[names.Entry]:
  out = names.entries(config, heads=False, pooler=head == "sequence")
  module = _HEAD_MODULE[head]
  out += [names.Entry((module, "kernel"), f"{module}.weight", "", "kernel"),
          names.Entry((module, "bias"), f"{module}.bias", "", "vector")]
  return out


def _hf_config(config: BertConfig, head: str, labels: list[str], problem_type: str | None,
               threshold: float | None) -> dict:
  out = config.to_hf_dict()
  out["architectures"] = [CLASSES[head]]
  if head != "span":
    out["id2label"] = {str(i): label for i, label in enumerate(labels)}
    out["label2id"] = {label: i for i, label in enumerate(labels)}
  if problem_type is not None:
    out["problem_type"] = problem_type
  if threshold is not None:
    out[THRESHOLD_KEY] = threshold
  return out


def write(dst: Path, config: BertConfig, params: dict, head: str, labels: list[str], problem_type: str | None,
          threshold: float | None, tokenizer) -> None:
  """A transformers folder at `dst` (an empty folder, e.g. flaxbert.atomic's temporary one)."""
  _check_tokenizer(tokenizer)
  if head == "embedding":  # the bi-encoder's encoder, as transformers' BertModel
    hf.write(dst, config, export_tensors(params, config, "hf", heads=False, pooler=False), heads=False)
  elif head in CLASSES:
    hf.save(dst, _hf_config(config, head, labels, problem_type, threshold),
            {e.hf: names.to_external(np.asarray(names.get_path(params, e.path)), e.kind, "hf")
             for e in _entries(config, head)})
  else:
    raise InputError(f"a '{head}' head (extractive summarization's sentence scorer with its inter-sentence "
                     "layers) has no transformers class to export to; its encoder can be used through "
                     "`flaxbert embed` or exported from the checkpoint it was fine-tuned from")
  tokenizer.save(dst)
  write_json(dst / "tokenizer_config.json",  # transformers' own keys (it reads vocab.txt with them)
             {"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lower_case,
              "model_max_length": config.max_position_embeddings, "unk_token": "[UNK]", "sep_token": "[SEP]",
              "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"})


def _check_tokenizer(tokenizer) -> None:
  if tokenizer.kind != "wordpiece":
    raise InputError(f"the model's tokenizer is {tokenizer.kind} ({tokenizer.source}); transformers' BertTokenizer "
                     "reads a WordPiece vocab.txt only")


def read(path: str | os.PathLike) -> TaskModel:
  """A transformers BertForSequenceClassification / BertForTokenClassification /
  BertForQuestionAnswering folder; strict about names and shapes."""
  path = Path(path)
  head = head_of(path)
  if head is None:
    raise InputError(f"{path}: not a transformers {' / '.join(CLASSES.values())} folder (config.json's architectures)")
  raw = read_json(path / "config.json")
  config, tensors = hf.read(path)
  tensors = normalize_hf_keys(tensors)
  labels, problem_type = _labels(raw, head, path / "config.json")
  shapes = param_shapes(config, head, max(len(labels), 1))
  params, expected = {}, set()
  for e in _entries(config, head):
    expected.add(e.hf)
    shape = names.get_path(shapes, e.path).shape
    if e.hf not in tensors:
      raise InputError(f"{path}: missing tensor {e.hf!r} (expected shape {names.external_shape(shape, e.kind, 'hf')})")
    names.set_path(params, e.path, names.from_external(tensors[e.hf], e.kind, "hf", shape, e.hf, str(path)))
  extra = sorted(k for k in set(tensors) - expected if k != "bert.embeddings.position_ids")
  if extra:
    raise InputError(f"{path}: unexpected tensor(s) {extra[:5]} for a {CLASSES[head]} with "
                     f"{config.num_hidden_layers} layers; does config.json match the weights?")
  params = check_weights(params, str(hf.weights_file(path)), {"/".join(e.path): e.hf for e in _entries(config, head)})
  threshold = raw.get(THRESHOLD_KEY)
  return TaskModel(config, head, params, labels, problem_type, None if threshold is None else float(threshold))


def _labels(raw: dict, head: str, source: Path) -> tuple[list[str], str | None]:
  """(labels by id, problem_type) as transformers reads them: num_labels from id2label, a missing
  problem_type inferred (1 output: regression)."""
  if head == "span":
    return [], None
  id2label = raw.get("id2label") or {str(i): f"LABEL_{i}" for i in range(int(raw.get("num_labels", 2)))}
  try:
    labels = [str(id2label[str(i)]) for i in range(len(id2label))]
  except KeyError:
    raise InputError(f"{source}: id2label keys must be 0…{len(id2label) - 1}, got {sorted(id2label)[:5]}") from None
  problem_type = raw.get("problem_type")
  if problem_type is None and head == "sequence":
    problem_type = "regression" if len(labels) == 1 else "single_label_classification"
  return labels, problem_type


def param_shapes(config: BertConfig, head: str, num_outputs: int) -> dict:
  """BertForTask's parameter tree as ShapeDtypeStructs (nothing allocated)."""
  ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  batch = {"input_ids": ids, "segment_ids": ids, "input_mask": ids, "cls_positions": jax.ShapeDtypeStruct((1, 1), jnp.int32)}
  return nn.unbox(boxed_param_shapes(BertForTask(config, head, num_outputs), (batch,)))
