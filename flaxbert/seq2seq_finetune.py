"""Sequence-to-sequence fine-tuning (BERT2BERT): translation and abstractive summarization.

`train_and_evaluate(config, workdir)` builds a flaxbert.seq2seq.BertEncoderDecoder, warm-starts it
from `config.init` as `config.warm_start` says (bert2bert | bert2rnd | bertshare, or random: the
init's architecture and vocabulary with fresh weights, or `model_size` without init), and trains
it with teacher forcing and label-smoothed cross-entropy on the machinery every job shares: the
mesh and partition rules (flaxbert.sharding), the train state built from shapes and initialised
straight into its sharded layout with the warm start inside that jitted init
(flaxbert.train.create_train_state), one jitted train step (flaxbert.train.make_train_step), the
optimizer and schedule (flaxbert.optim), and the fine-tuning loop with Orbax checkpoints, exact
resume and SIGTERM saves (flaxbert.finetune.fit). Evaluation decodes every example of each eval
file with beam search (flaxbert.generate: one compiled loop per batch shape) and scores the
detokenized hypotheses against the references: BLEU, case-insensitive BLEU and chrF (sacrebleu,
standard 13a tokenization) for translation; ROUGE-1/2/L (rouge-score, stemmed F1, best over
several references) for summaries.

Layout (transformers' bert2bert convention): source `[CLS] x [SEP]`; decoder input `[CLS] y`,
labels `y [SEP]`; generation starts at [CLS] and stops at [SEP].

Vocabulary: config.vocab, else the init checkpoint's, else a joint sentencepiece trained on both
sides of the training pairs (config.vocab_size pieces, cased unless config.lower_case).

The workdir holds task.json (task, warm start, both model configs, lengths: what `evaluate` and
`generate` rebuild the model from), the tokenizer (vocab.txt or spm.model), checkpoints/,
metrics.jsonl and events, eval_results.json, and hypotheses.txt for the first eval file
(hypotheses_STEM.txt for the others).
"""
import json
import logging
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from flaxbert import checkpoint, optim, seq2seq, sharding
from flaxbert.atomic import atomic_file
from flaxbert.config import SIZES, BertConfig
from flaxbert.errors import InputError
from flaxbert.losses import token_cross_entropy
from flaxbert.finetune import (RESULTS_FILE, TASK_FILE, check_finetune_workdir, check_record, evaluation_dir, fit,
                               optimizer_section, write_json)
from flaxbert.pretrained import load
from flaxbert.tasks import batching, parallel
from flaxbert.tasks.readers import ReadReport, text_lines
from flaxbert.tasks.scores import translation_scores
from flaxbert.tasks.summarization import rouge_scores
from flaxbert.tokenization import Tokenizer, load_tokenizer
from flaxbert.train import boxed_param_shapes, create_train_state, make_train_step
from flaxbert.seq2seq_inputs import GROUPS, Seq2Seq
from flaxbert.warm_start import MODES, fresh_mask, warm_start

log = logging.getLogger("flaxbert")
WARM_STARTS = MODES + ("random",)


# --- training ----------------------------------------------------------------------------------


def loss_sums(model, params, batch: dict, rng, label_smoothing: float) -> dict:
  """Label-smoothed cross-entropy over the real target tokens, as sums with a token count."""
  logits = model.apply({"params": params}, batch["source_ids"], batch["source_mask"], batch["target_ids"],
                       batch["target_mask"], deterministic=rng is None,
                       rngs=None if rng is None else {"dropout": rng})
  nll, loss, correct = token_cross_entropy(logits, batch["labels"], label_smoothing)
  rows = batch.get("example_mask", jnp.ones(logits.shape[:1], jnp.int32)).astype(jnp.float32)
  w = batch["target_mask"].astype(jnp.float32) * rows[:, None]
  return {"token_loss_sum": jnp.sum(loss * w), "token_nll_sum": jnp.sum(nll * w),
          "token_correct": jnp.sum(correct * w), "token_count": jnp.sum(w)}


def _counts(batch: dict) -> dict:
  rows = batch["example_mask"].astype(jnp.float32)
  return {"token_count": jnp.sum(batch["target_mask"].astype(jnp.float32) * rows[:, None])}


def _objective(sums: dict, counts: dict) -> jax.Array:
  return sums["token_loss_sum"] / jnp.maximum(counts["token_count"], 1.0)


def read(config: ml_collections.ConfigDict, spec: str, field: str, training: bool) -> tuple[list, ReadReport]:
  if not spec:
    raise InputError(f"{field}: required")
  targets = config.target_fields if training or not config.eval_target_fields else config.eval_target_fields
  report = ReadReport(spec)
  examples = parallel.read_spec(spec, config.source_field, [f for f in targets.split(",") if f], report)
  if not examples:
    raise InputError(f"{field}: {spec}: no examples ({report.reasons or 'empty'})")
  if report.skipped and not training:
    log.warning("%s: skipped %d pair(s): %s", spec, report.skipped, report.reasons)
  return examples, report


def eval_sets(config: ml_collections.ConfigDict) -> list[tuple[str, list, ReadReport]]:
  """(name, examples, report) of each comma-separated eval spec; name: the target file's stem."""
  return [(Path(spec.split("|")[-1]).name.split(".")[0], *read(config, spec, "eval_path", training=False))
          for spec in (config.eval_path or "").split(",") if spec]


def _tokenizer(config: ml_collections.ConfigDict, workdir: Path, loaded, train: list) -> Tokenizer:
  """The workdir's own (a resumed run), config.vocab, the init's, or a new joint sentencepiece."""
  if (workdir / "tokenizer_config.json").is_file():
    return load_tokenizer(workdir)
  if config.vocab:
    return load_tokenizer(config.vocab, lower_case=config.lower_case)
  if loaded is not None:
    return load_tokenizer(loaded.vocab or config.init, lower_case=config.lower_case)
  from data_prep.vocab import train_sentencepiece  # pylint: disable=import-outside-toplevel
  lines = [text for e in train for text in (e.source, e.target)]
  log.info("training a joint sentencepiece vocabulary of %d pieces on %d lines", config.vocab_size, len(lines))
  try:
    return train_sentencepiece(None, workdir / "joint_vocab", config.vocab_size, lines=lines,
                               lower_case=bool(config.lower_case))
  except InputError as e:
    raise InputError(f"vocab_size: {config.vocab_size} pieces for the joint vocabulary of {config.train_path}: "
                     f"{e}") from None


def _configs(config: ml_collections.ConfigDict, loaded, vocab_size: int) -> BertConfig:
  c = config
  if loaded is not None:
    cfg = loaded.config
    if cfg.vocab_size != vocab_size:
      raise InputError(f"vocab: {vocab_size} tokens, but {c.init} has vocab_size {cfg.vocab_size}; warm starting "
                       "needs the checkpoint's own vocabulary (leave vocab unset)")
  else:
    cfg = BertConfig.from_size(c.model_size, vocab_size=vocab_size)
  return cfg.replace(hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout, dtype=c.dtype,
                     param_dtype="float32")


def _position_limit(config: ml_collections.ConfigDict, loaded) -> int:
  """The model's max_position_embeddings: the init checkpoint's, or model_size's."""
  if loaded is None and config.model_size not in SIZES:
    raise InputError(f"model_size: expected one of {sorted(SIZES)}, got {config.model_size!r}")
  return (loaded.config if loaded is not None else BertConfig.from_size(config.model_size)).max_position_embeddings


def _check_lengths(config: ml_collections.ConfigDict, limit: int) -> None:
  """Before any work: both lengths must fit the model's positions."""
  for field in ("max_source_length", "max_target_length"):
    if not 3 <= config[field] <= limit:
      raise InputError(f"{field}: {config[field]}; expected 3 to the model's max_position_embeddings ({limit})")


def build(config: ml_collections.ConfigDict, cfg: BertConfig, tokenizer: Tokenizer, share: bool,
          devices=None) -> Seq2Seq:
  mesh = sharding.make_mesh(config.mesh, devices)
  parallel_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  for field in ("batch_size", "eval_batch_size"):
    if config[field] < 1 or config[field] % parallel_devices:
      raise InputError(f"{field}: {config[field]} must be a positive multiple of the data-parallel devices "
                       f"({parallel_devices})")
  model = seq2seq.BertEncoderDecoder(cfg, cfg, share=share)
  return Seq2Seq(model, tokenizer, mesh, sharding.rules_from_config(config.sharding_rules),
                 config.max_source_length, config.max_target_length)


def _input_shapes(s: Seq2Seq) -> tuple:
  src = jax.ShapeDtypeStruct((1, s.max_source_length), jnp.int32)
  tgt = jax.ShapeDtypeStruct((1, s.max_target_length), jnp.int32)
  return (src, src, tgt, tgt)


def optimizer(opt_config: ml_collections.ConfigDict, fresh_lr_scale: float, mode: str | None,
              has_mlm_head: bool) -> optax.GradientTransformation:
  """flaxbert.optim's optimizer, whose updates of the weights the warm start leaves fresh
  (warm_start.fresh_mask) are scaled by fresh_lr_scale: they learn at that multiple of the lr."""
  if isinstance(fresh_lr_scale, bool) or not isinstance(fresh_lr_scale, (int, float)) or not fresh_lr_scale > 0:
    raise InputError(f"fresh_lr_scale: expected a positive number, got {fresh_lr_scale!r}")
  return optax.chain(optim.build_optimizer(opt_config),
                     optax.masked(optax.scale(float(fresh_lr_scale)), fresh_mask(mode, has_mlm_head)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, devices=None) -> dict:
  """Trains as `config` says in `workdir` (resuming what is there); returns the final dev scores."""
  c, workdir = config, Path(workdir)
  check_finetune_workdir(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  sharding.initialize_distributed()
  if c.warm_start not in WARM_STARTS:
    raise InputError(f"warm_start: expected one of {list(WARM_STARTS)}, got {c.warm_start!r}")
  if not c.init and c.warm_start != "random":
    raise InputError(f"init: required for warm_start={c.warm_start!r} (a BERT checkpoint; or warm_start=random)")
  loaded = load(c.init) if c.init else None
  _check_lengths(c, _position_limit(c, loaded))
  train, train_report = read(c, c.train_path, "train_path", training=True)
  if any(e.target is None for e in train):
    raise InputError(f"train_path: {c.train_path}: no targets; expected SOURCE|TARGET files, a .tsv or a .jsonl")
  evals = eval_sets(c)
  tokenizer = _tokenizer(c, workdir, loaded, train)
  cfg = _configs(c, loaded, tokenizer.vocab_size)
  s = build(c, cfg, tokenizer, share=c.warm_start == "bertshare", devices=devices)
  arrays = s.pairs(train, train_report, c.cut_long_sources)
  record = {"task": c.task, "state": {"warm_start": c.warm_start, "init": str(c.init)}, "model": cfg.to_dict(),
            "max_source_length": c.max_source_length, "max_target_length": c.max_target_length}
  check_record(workdir, record)
  if jax.process_index() == 0 and not (workdir / "tokenizer_config.json").is_file():
    tokenizer.save(workdir)

  n = len(arrays["labels"])
  per_epoch = batching.steps_per_epoch(n, c.batch_size)
  total = max(1, int(np.ceil(c.num_epochs * per_epoch)))
  opt_config = optimizer_section(c, total)
  mode = None if c.warm_start == "random" else c.warm_start
  has_head = loaded is not None and "predictions" in loaded.params.get("cls", {})
  tx, schedule = optimizer(opt_config, c.fresh_lr_scale, mode, has_head), optim.learning_rate_schedule(opt_config)
  fresh = f", the weights it lacks at {c.fresh_lr_scale:g}× the lr" if mode else ""
  log.info("%s (%s%s): %d training pairs, %d steps (%d per epoch); %s", c.task, c.warm_start, fresh, n, total,
           per_epoch, optim.describe(opt_config))
  state, shardings = create_train_state(
      s.model, tx, s.mesh, s.rules, c.seed, _input_shapes(s), loaded.params if mode else None,
      (lambda fresh, bert: warm_start(fresh, bert, mode)) if mode else None, rng_impl=c.rng_impl)
  del loaded
  smoothing = float(c.label_smoothing)
  train_step = jax.jit(
      make_train_step(lambda p, b, rng: loss_sums(s.model, p, b, rng, smoothing), _counts, _objective, tx,
                      schedule, 1),
      donate_argnums=0, in_shardings=(shardings, sharding.batch_sharding(s.mesh)),
      out_shardings=(shardings, NamedSharding(s.mesh, P())))

  keys = arrays["target_mask"].sum(axis=1) * (c.max_source_length + 1) + arrays["source_mask"].sum(axis=1)

  def batch_at(step):
    if c.length_bucket:
      batch = batching.trim(batching.grouped_batch(arrays, step, c.batch_size, c.seed, keys), GROUPS, c.length_bucket)
    else:
      batch = batching.train_batch(arrays, step, c.batch_size, c.seed)
    return sharding.global_batch(batching.local_slice(batch, jax.process_index(), jax.process_count()), s.mesh)

  def evaluate_all(params, final: bool) -> dict:
    return evaluate_sets(c, s, params, evals, workdir if final else None)

  results, stopped_by = fit(c, workdir, state, train_step, batch_at, total, per_epoch, evaluate_all)
  if stopped_by is None and evals:
    write_json(workdir / RESULTS_FILE, results)
  return results


def evaluate_sets(config: ml_collections.ConfigDict, s: Seq2Seq, params, evals, workdir: Path | None) -> dict:
  """Scores of each (name, examples, report); the first file's unprefixed. With a workdir, the
  hypotheses go to hypotheses.txt (first file) and hypotheses_NAME.txt."""
  results = {}
  for n, (name, examples, report) in enumerate(evals):
    hyps = s.generate(params, [e.source for e in examples], config.eval_batch_size, config.beam_size,
                      config.length_penalty, report, config.length_bucket)
    refs = [e.references for e in examples]
    if any(not r for r in refs):
      raise InputError(f"eval_path: {report.path}: no references; expected SOURCE|TARGET files, a .tsv or a .jsonl")
    scores = translation_scores(hyps, refs) if config.task == "translation" else rouge_scores(hyps, refs)
    results.update({(k if n == 0 else f"{name}_{k}"): float(v) for k, v in scores.items()})
    if workdir is not None and jax.process_index() == 0:
      write_lines(workdir / ("hypotheses.txt" if n == 0 else f"hypotheses_{name}.txt"), hyps)
  return results


def write_lines(path: Path, lines: Sequence[str]) -> None:
  with atomic_file(path) as tmp:
    tmp.write_text("".join(line.replace("\n", " ") + "\n" for line in lines), encoding="utf-8")


# --- a finished workdir ------------------------------------------------------------------------


def restore(workdir: str | Path, config: ml_collections.ConfigDict | None = None, devices=None):
  """(Seq2Seq, params, record) from a seq2seq workdir's task.json, tokenizer and newest checkpoint."""
  workdir = Path(workdir)
  path = workdir / TASK_FILE
  if not path.is_file():
    raise InputError(f"{workdir}: no {TASK_FILE}; not a fine-tuning workdir (run `flaxbert finetune` first)")
  record = json.loads(path.read_text())
  if "max_target_length" not in record:
    raise InputError(f"{path}: fine-tuned for {record.get('task')}, not a translation/summarization_abstractive "
                     "encoder-decoder")
  cfg = BertConfig.from_dict(record["model"])
  if config is None:  # generation: the task's settings with the lengths the model was trained with
    from configs.finetune import get_config  # pylint: disable=import-outside-toplevel
    config = get_config(record["task"])
    config.max_source_length, config.max_target_length = record["max_source_length"], record["max_target_length"]
  else:  # evaluation: the config's lengths (parameters do not depend on them; e.g. longer out-of-domain text)
    config = config.copy_and_resolve_references()
    _check_lengths(config, cfg.max_position_embeddings)
  s = build(config, cfg, load_tokenizer(workdir), share=record["state"]["warm_start"] == "bertshare",
            devices=devices)
  _, params, _ = checkpoint.restore_sharded(workdir, boxed_param_shapes(s.model, _input_shapes(s)), s.mesh, s.rules)
  return s, params, record, config


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path, devices=None) -> dict:
  """Scores the workdir's newest checkpoint on config.eval_path; writes the scores and hypotheses to
  WORKDIR/evaluations/STEM/ (finetune.evaluation_dir)."""
  s, params, record, config = restore(workdir, config, devices)
  if record["task"] != config.task:
    raise InputError(f"{Path(workdir) / TASK_FILE}: fine-tuned for {record['task']}, but the config is for "
                     f"{config.task}")
  evals = eval_sets(config)
  if not evals:
    raise InputError("eval_path: required")
  out = evaluation_dir(Path(workdir), evals[0][0])
  results = evaluate_sets(config, s, params, evals, out)
  write_json(out / RESULTS_FILE, results)
  return results


def generate_file(model: str | Path, input_path: str | Path, output: str | Path, beam_size: int | None = None,
                  length_penalty: float | None = None, batch_size: int | None = None) -> int:
  """Writes one output line per line of `input_path` (a blank line gives a blank output); returns
  how many lines. Unset options take the workdir's task defaults (configs/finetune.py)."""
  s, params, _, config = restore(model)
  batch_size = batch_size or config.eval_batch_size
  devices = s.mesh.shape["data"] * s.mesh.shape["fsdp"]
  if batch_size < 1 or batch_size % devices:
    raise InputError(f"--batch_size: {batch_size} must be a positive multiple of the data-parallel devices ({devices})")
  lines = [line.strip() for line in text_lines(input_path)]
  texts = [line for line in lines if line]
  hyps = iter(s.generate(params, texts, batch_size,
                         config.beam_size if beam_size is None else beam_size,
                         config.length_penalty if length_penalty is None else length_penalty,
                         ReadReport(str(input_path)), config.length_bucket) if texts else [])
  if jax.process_index() == 0:
    write_lines(Path(output), [next(hyps) if line else "" for line in lines])
  return len(lines)


def predict(config: ml_collections.ConfigDict, workdir: str | Path, input_path: str, output: str) -> int:
  """`flaxbert predict` for an encoder-decoder task: generate_file with the config's beam settings."""
  return generate_file(workdir, input_path, output, config.beam_size, config.length_penalty, config.eval_batch_size)
