"""TASK name (configs/finetune.py) → the task family that handles it."""
from flaxbert.errors import InputError
from flaxbert.tasks.base import Task


def get_task(config) -> Task:
  name = config.task
  # Imported here so that a task family's dependencies load only when it is used.
  # pylint: disable=import-outside-toplevel
  if name.startswith("glue_"):
    from flaxbert.tasks.classification import Classification
    return Classification(config)
  if name == "ner":
    from flaxbert.tasks.tokens import TokenClassification
    return TokenClassification(config)
  if name in ("squad_v1", "squad_v2"):
    from flaxbert.tasks.qa import QuestionAnswering
    return QuestionAnswering(config)
  if name == "similarity":
    from flaxbert.tasks.similarity import Similarity
    return Similarity(config)
  if name == "summarization":
    from flaxbert.tasks.extractive import ExtractiveSummarization
    return ExtractiveSummarization(config)
  raise InputError(f"task: unknown task {name!r}")
