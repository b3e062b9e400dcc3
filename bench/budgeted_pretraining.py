"""Pretraining for a wall-clock budget, flaxbert and transformers alike (bench/time_to_quality.py's two
pretraining arms).

Neither framework stops at a time, so each side first calibrates: a short run gives its steady step
time s and its fixed overhead o (start, compile, final save); the run then gets
num_train_steps = (budget − o) / s, so that the schedule's linear warmup and decay span the budget.
A run that overruns is stopped at the budget (flaxbert: a SIGTERM, which its loop takes as a
preemption: it saves and stops at the next step; torch: no step starts after it). With
args.pretrain_steps set, each side instead trains that many steps, uncalibrated and unbudgeted.

  flaxbert      `flaxbert.pretrain.job.train_and_evaluate` in the calling process;
  transformers  `transformers.BertForPreTraining` in a child process with the default malloc
                (`launch.plain_env`; bench/torch_side.py says why), fed flaxbert's batches in
                order (dynamic masks too: the input pipeline draws them), trained with
                `training_parity.torch_optimizer` and `clip_grad_norm_` on BertForPreTraining's
                loss, or on single segments its masked-LM part alone (BertForMaskedLM's loss):

  python bench/budgeted_pretraining.py SPEC.json   # the child (transformers_side writes SPEC)
"""
import dataclasses
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from bench import training_parity  # noqa: E402
from configs import pretrain as pretrain_config  # noqa: E402
from flaxbert import launch  # noqa: E402
from flaxbert.pretrain import job as pretrain_job  # noqa: E402
from flaxbert.pretrain.input_pipeline import DynamicMasking, PretrainingData  # noqa: E402
from flaxbert.training import optim, stop_signals  # noqa: E402


# --- pretraining: flaxbert ---------------------------------------------------------------------


def pretraining_config(args, dataset: Path, steps: int) -> ml_collections.ConfigDict:
  """configs/pretrain.py:SIZE on `dataset` for `steps` steps, the warmup a proportion of them."""
  c = pretrain_config.get_config(args.size)
  proportion = (args.warmup_proportion if args.warmup_proportion is not None
                else c.optim.warmup_steps / c.num_train_steps)  # the recipe's 10k of 1M steps
  c.dataset_dir, c.seed, c.num_train_steps = str(dataset), args.pretrain_seed, steps
  c.global_batch_size = args.batch_size
  if args.learning_rate is not None:
    c.optim.learning_rate = args.learning_rate
  if args.pretrain_dropout is not None:  # the initial export carries it to the transformers side too
    c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = args.pretrain_dropout
  c.optim.warmup_steps, c.optim.warmup_proportion = None, proportion
  c.log_every_steps, c.eval_every_steps, c.eval_max_batches = min(100, steps), 0, 1
  c.checkpoint.every_steps, c.checkpoint.keep = steps, 1
  return c


def run_flaxbert(config: ml_collections.ConfigDict, workdir: Path, budget_s: float) -> dict:
  """`train_and_evaluate` in a fresh workdir, stopped at `budget_s` if it runs that long (a SIGTERM,
  which the loop takes as a preemption; one arriving while the job starts is deferred to its loop)."""
  shutil.rmtree(workdir, ignore_errors=True)
  timer = threading.Timer(budget_s, os.kill, (os.getpid(), signal.SIGTERM)) if math.isfinite(budget_s) else None
  with stop_signals.deferred():
    start = time.perf_counter()
    if timer is not None:
      timer.start()
    try:
      summary = pretrain_job.train_and_evaluate(config, workdir)
    finally:
      if timer is not None:
        timer.cancel()
    wall = time.perf_counter() - start
  return {"summary": summary, "wall_seconds": wall}


def flaxbert_side(args, dataset: Path, work: Path) -> dict:
  """A budgeted run, or with args.pretrain_steps that many steps whatever they take (no calibration)."""
  k, calibration, budget_s = args.calibration_steps, None, args.budget_minutes * 60
  if args.pretrain_steps:
    steps, budget_s = args.pretrain_steps, math.inf
  else:
    run = run_flaxbert(pretraining_config(args, dataset, k), work / "calibrate_flaxbert", math.inf)
    step_s = args.batch_size / run["summary"]["final_train_metrics"]["examples_per_second"]
    overhead = run["wall_seconds"] - k * step_s
    steps = planned_steps(budget_s, overhead, step_s)
    calibration = {"steps": k, "step_seconds": step_s, "overhead_seconds": overhead}
    print(f"flaxbert: {step_s:.3f} s/step, overhead {overhead:.1f} s -> {steps} steps", flush=True)
    shutil.rmtree(work / "calibrate_flaxbert", ignore_errors=True)
  run = run_flaxbert(pretraining_config(args, dataset, steps), work / "pretrain_flaxbert", budget_s)
  s = run["summary"]
  return {"checkpoint": str(work / "pretrain_flaxbert"), "calibration": calibration,
          "planned_steps": steps, "steps": s["step"], "stopped_at_budget": s["step"] < steps,
          "stopped_by": s["stopped_by"],
          "wall_seconds": run["wall_seconds"], "final_train_loss": s["final_train_metrics"].get("loss"),
          "final_train_metrics": s["final_train_metrics"]}


def planned_steps(budget_s: float, overhead_s: float, step_s: float) -> int:
  return max(1, int((budget_s - overhead_s) / step_s))


# --- pretraining: transformers (child process) -------------------------------------------------


def transformers_side(args, dataset: Path, work: Path, initial: Path) -> dict:
  """The torch run in a child process with the default malloc (launch.plain_env): `torch_child`."""
  c = pretraining_config(args, dataset, 1)
  spec = {"dataset": str(dataset), "batch": c.global_batch_size, "seed": args.pretrain_seed,
          "optim": c.optim.to_dict(), "initial": str(initial), "init": args.torch_init, "vocab": str(args.vocab),
          "budget_s": args.budget_minutes * 60, "calibration_steps": args.calibration_steps,
          "steps": args.pretrain_steps, "nsp": args.nsp,
          "masking": dataclasses.asdict(pretrain_job.dynamic_masking(c)),  # flaxbert's masks, drawn alike
          "out": str(work / "pretrain_transformers"), "result": str(work / "torch_result.json")}
  (work / "torch_spec.json").write_text(json.dumps(spec, indent=2))
  subprocess.run([sys.executable, str(Path(__file__).resolve()), str(work / "torch_spec.json")],
                 cwd=REPO, env=launch.plain_env(dict(os.environ)), check=True)
  return json.loads(Path(spec["result"]).read_text())


def torch_child(spec_path: str) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  spec = json.loads(Path(spec_path).read_text())
  torch.set_num_threads(os.cpu_count())
  data = PretrainingData(spec["dataset"], "train", global_batch_size=spec["batch"], seed=spec["seed"],
                         masking=DynamicMasking(**spec["masking"]))

  def train(steps: int, budget_s: float):
    start = time.perf_counter()
    torch.manual_seed(spec["seed"])
    model = (transformers.BertForPreTraining.from_pretrained(spec["initial"]) if spec["init"] == "flaxbert"
             else transformers.BertForPreTraining(transformers.BertConfig.from_pretrained(spec["initial"])))
    model.train()
    opt = optim.resolve(ml_collections.ConfigDict(spec["optim"]), steps)
    optimizer, schedule = training_parity.torch_optimizer(model, opt)
    times, losses, stream = [], [], data.iterate(0)
    for _ in range(steps):
      if time.perf_counter() - start >= budget_s:
        break
      t = time.perf_counter()
      inputs = training_parity.torch_inputs(next(stream), nsp=spec["nsp"])
      out = model(**inputs)
      loss = out.loss if spec["nsp"] else training_parity.mlm_loss(out, inputs["labels"])
      loss.backward()
      if opt.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.max_grad_norm)
      optimizer.step()
      schedule.step()
      optimizer.zero_grad(set_to_none=True)
      losses.append(float(loss.detach()))
      times.append(time.perf_counter() - t)
    stream.close()
    return model, start, times, losses

  k, calibration, budget_s = spec["calibration_steps"], None, spec["budget_s"]
  if spec.get("steps"):  # a fixed number of steps, whatever they take
    steps, budget_s = spec["steps"], math.inf
  else:
    _, start, times, _ = train(k, math.inf)
    wall = time.perf_counter() - start
    step_s = statistics.median(times[1:] or times)
    overhead = wall - k * step_s
    steps = planned_steps(budget_s, overhead, step_s)
    calibration = {"steps": k, "step_seconds": step_s, "overhead_seconds": overhead}
    print(f"transformers: {step_s:.3f} s/step, overhead {overhead:.1f} s -> {steps} steps", flush=True)
  model, start, times, losses = train(steps, budget_s)
  shutil.rmtree(spec["out"], ignore_errors=True)
  model.save_pretrained(spec["out"])
  shutil.copy(spec["vocab"], Path(spec["out"]) / "vocab.txt")
  wall = time.perf_counter() - start
  Path(spec["result"]).write_text(json.dumps({
      "checkpoint": spec["out"], "calibration": calibration, "step_seconds": statistics.median(times[1:] or times),
      "planned_steps": steps, "steps": len(losses), "stopped_at_budget": len(losses) < steps, "wall_seconds": wall,
      "final_train_loss": float(np.mean(losses[-min(100, len(losses)):])), "init": spec["init"],
      "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
      "attn_implementation": model.config._attn_implementation,  # pylint: disable=protected-access
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}, indent=2))


if __name__ == "__main__":
  torch_child(sys.argv[1])
