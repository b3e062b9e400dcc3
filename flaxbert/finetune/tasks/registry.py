"""The one list of fine-tuning tasks: TASK name (configs/finetune.py:TASK) → its task family.

Every family implements flaxbert.finetune.tasks.base.Task; its `kind` is what a workdir's
task.json records and what every command dispatches on. Family modules are imported when used,
so reading this list (the command line's help) imports no JAX.
"""
import importlib

from flaxbert.errors import InputError
from flaxbert.finetune.tasks.glue_tsv import GLUE_FORMATS

# kind → (module, class) of the family
FAMILIES = {
    "classification": ("flaxbert.finetune.tasks.classification", "Classification"),
    "ner": ("flaxbert.finetune.tasks.ner", "TokenClassification"),
    "qa": ("flaxbert.finetune.tasks.qa", "QuestionAnswering"),
    "similarity": ("flaxbert.finetune.tasks.similarity", "Similarity"),
    "extractive_summarization": ("flaxbert.finetune.tasks.extractive", "ExtractiveSummarization"),
    "seq2seq": ("flaxbert.finetune.tasks.seq2seq", "Seq2SeqTask"),
}

TASKS = {
    "classification": "classification",  # your own CSV/TSV/JSONL: any labels, multi-label, regression
    **{f"glue_{name}": "classification" for name in GLUE_FORMATS},
    "ner": "ner",
    "squad_v1": "qa",
    "squad_v2": "qa",
    "similarity": "similarity",
    "summarization": "extractive_summarization",
    "translation": "seq2seq",
    "summarization_abstractive": "seq2seq",
}


def family_of(task: str) -> str:
  """The kind of the family that runs `task`."""
  if task not in TASKS:
    raise InputError(f"task: unknown task {task!r}; expected one of {', '.join(TASKS)}")
  return TASKS[task]


def family(kind: str) -> type:
  """The Task class of a family kind."""
  if kind not in FAMILIES:
    raise InputError(f"kind: unknown task family {kind!r}; expected one of {', '.join(FAMILIES)}")
  module, name = FAMILIES[kind]
  return getattr(importlib.import_module(module), name)


def get_task(config):
  """The task family of config.task, built on `config`."""
  return family(family_of(config.task))(config)
