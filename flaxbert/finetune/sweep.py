"""The BERT paper's fine-tuning grid: every (learning rate, batch size, epochs) of `config.sweep`.

Each point fine-tunes into WORKDIR/lr{lr}_bs{batch}_ep{epochs} (so a rerun resumes or skips
finished points), and WORKDIR/sweep_results.json lists every point's dev scores and the best one
by the task's main metric (the first of MAIN_METRICS its scores have: matthews_corr for CoLA, f1
for SQuAD, bleu for translation). The paper picks the best learning rate on dev for each task; so
does this. Every task family sweeps the same way (flaxbert.finetune.job).
"""
import itertools
import logging
import math
from pathlib import Path

import ml_collections

from flaxbert import atomic, storage
from flaxbert.finetune import job

log = logging.getLogger("flaxbert")

# The score that ranks sweep points, per result key present (first match wins).
MAIN_METRICS = ("matthews_corr", "spearman", "f1", "accuracy", "rouge2", "exact_match", "bleu")


def main_metric(results: dict) -> str:
  return next((m for m in MAIN_METRICS if m in results), sorted(results)[0])


def _rank(value) -> float:
  """NaN (a constant prediction has no correlation) or a missing score ranks last."""
  return float("-inf") if value is None or math.isnan(value) else float(value)


def run_sweep(config: ml_collections.ConfigDict, workdir: str | Path, devices=None) -> dict:
  workdir = storage.path(workdir)
  points = []
  for lr, batch, epochs in itertools.product(config.sweep.learning_rates, config.sweep.batch_sizes,
                                             config.sweep.num_epochs):
    point = config.copy_and_resolve_references()
    point.optim.learning_rate, point.batch_size, point.num_epochs = float(lr), int(batch), float(epochs)
    name = f"lr{lr:g}_bs{batch}_ep{epochs:g}"
    log.info("sweep point %s", name)
    results = job.train_and_evaluate(point, workdir / name, devices)
    points.append({"name": name, "learning_rate": lr, "batch_size": batch, "num_epochs": epochs, "results": results})
  metric = main_metric(points[0]["results"])
  best = max(points, key=lambda p: _rank(p["results"].get(metric)))
  summary = {"task": config.task, "metric": metric, "best": best, "points": points}
  atomic.write_json(workdir / "sweep_results.json", summary)
  return summary
