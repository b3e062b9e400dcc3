"""The `flaxbert` command: parses arguments and calls the library; no work happens here."""
import argparse
import contextlib
import json
import logging
import os
import sys

from flaxbert.atomic import check_output_file
from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.finetune.tasks.registry import TASKS
from flaxbert.training import stop_signals

_OVERWRITE_FILE = "replace --output if it exists (only once the new file is complete)"


def _convert(args: argparse.Namespace) -> None:
  # pylint: disable=import-outside-toplevel
  from flaxbert.finetune.workdir import TASK_FILE, read_record
  from flaxbert.interop.pretrained import convert
  if (storage.path(args.src) / TASK_FILE).is_file():  # a fine-tuning workdir
    record = read_record(args.src)
    if args.to != "hf":
      raise InputError(f"--to {args.to}: a fine-tuned {record['task']} workdir exports to transformers (--to hf) "
                       "only; its encoder alone: `flaxbert embed`, or convert the checkpoint it was fine-tuned from")
    from flaxbert.finetune.job import export_hf
    written = export_hf(args.src, args.dst, overwrite=args.overwrite)
    print(f"converted {record['task']} workdir {args.src} → transformers {written}: {args.dst}")
    return
  loaded = convert(args.src, args.dst, args.to, overwrite=args.overwrite)
  cfg = loaded.config
  source = loaded.kind if loaded.step is None else f"{loaded.kind} step {loaded.step}"
  print(f"converted {source} → {args.to}: {args.dst} (L{cfg.num_hidden_layers}/H{cfg.hidden_size}, "
        f"{'with' if loaded.heads else 'without'} pretraining heads"
        f"{', vocab.txt copied' if loaded.vocab else ''})")


# Plain flags of `prepare`, each a field of its config (data_prep/settings.py; also --config.FIELD=…).
_PREPARE_FLAGS = {
    "input": dict(nargs="+", help="text files or folders"),
    "vocab": dict(help="vocab.txt or sentencepiece .model (omit to train one on the corpus)"),
    "output_dir": dict(help="the dataset folder to write"),
    "input_format": dict(choices=("sentence_per_line", "document_per_file")),
    "max_seq_length": dict(type=int), "max_predictions_per_seq": dict(type=int),
    "masked_lm_prob": dict(type=float), "short_seq_prob": dict(type=float),
    "dupe_factor": dict(type=int), "seed": dict(type=int), "num_workers": dict(type=int),
    "masking": dict(choices=("static", "dynamic")),
    "whole_word_mask": dict(action=argparse.BooleanOptionalAction),
    "lower_case": dict(action=argparse.BooleanOptionalAction),
    "random_next_sentence": dict(action=argparse.BooleanOptionalAction),
    "overwrite": dict(action=argparse.BooleanOptionalAction),
}


def _config(args: argparse.Namespace, default: str, flags: dict):
  """The --config file (or the default), then plain flags, then --config.key=value overrides."""
  from flaxbert import config_flags  # pylint: disable=import-outside-toplevel
  config, renamed = config_flags.load_config(args.config or default)
  for name in flags:
    value = getattr(args, name)
    if value is not None:
      config[name] = tuple(value) if isinstance(value, list) else value
  return config_flags.apply_overrides(config, args.overrides, renamed)


def _prepare(args: argparse.Namespace) -> None:
  from data_prep.builder import prepare  # pylint: disable=import-outside-toplevel
  config = _config(args, "prepare", _PREPARE_FLAGS)
  output, metadata = prepare(config)
  splits = json.loads((output / "dataset_info.json").read_text())["splits"]
  counts = ", ".join(f"{s['name']} {sum(int(n) for n in s['shardLengths'])} examples in "
                     f"{len(s['shardLengths'])} shards" for s in splits)
  tokens = "tokens not counted" if metadata["tokens"] is None else f"{metadata['tokens']} tokens"
  print(f"prepared {output}: {counts}; {tokens}")
  print(f"sources: {metadata['sources_summary']}")


def _pretrain(args: argparse.Namespace) -> int | None:
  from flaxbert.pretrain.job import train_and_evaluate  # pylint: disable=import-outside-toplevel
  summary = train_and_evaluate(_config(args, "pretrain:tiny", {}), args.workdir)
  if summary["stopped_by"]:
    print(f"stopped early by {summary['stopped_by']} at step {summary['step']} of {summary['num_train_steps']} "
          f"(saved; rerun the same command to resume); summary in {os.path.join(args.workdir, 'summary.json')}")
    return _stopped_code(summary["stopped_by"])
  final = summary["final_eval_metrics"]
  print(f"pretrained to step {summary['step']}: eval mlm_accuracy {final.get('eval_mlm_accuracy', float('nan')):.4f}; "
        f"summary in {os.path.join(args.workdir, 'summary.json')}")


def _stopped_code(signal_name: str) -> int:
  """128 + the signal's number (143 for SIGTERM), as a shell reports a process the signal ended:
  schedulers requeue a preempted job on it."""
  import signal  # pylint: disable=import-outside-toplevel
  return 128 + int(signal.Signals[signal_name])


def _task_config(args: argparse.Namespace):
  return _config(args, "finetune:glue_sst2", {})


def _finetune(args: argparse.Namespace) -> int | None:
  from flaxbert.finetune.job import train_and_evaluate  # pylint: disable=import-outside-toplevel
  results = train_and_evaluate(_task_config(args), args.workdir)
  if results:
    print(f"fine-tuned; dev scores {json.dumps(results)} in {os.path.join(args.workdir, 'eval_results.json')}")
    return None
  stopped = getattr(results, "stopped_by", None)
  if stopped:  # the checkpoint is saved
    print(f"stopped early by {stopped} (saved; rerun the same command to resume); "
          f"checkpoints in {os.path.join(args.workdir, 'checkpoints')}")
    return _stopped_code(stopped)
  print(f"fine-tuned without dev scores (no eval_path); checkpoints in {os.path.join(args.workdir, 'checkpoints')}")
  return None


def _evaluate(args: argparse.Namespace) -> None:
  from flaxbert.finetune.job import evaluate  # pylint: disable=import-outside-toplevel
  results = evaluate(_task_config(args), args.workdir)
  print(f"scores {json.dumps(results)}, written under {os.path.join(args.workdir, 'evaluations')}")


def _predict(args: argparse.Namespace) -> None:
  from flaxbert.finetune.job import predict  # pylint: disable=import-outside-toplevel
  check_output_file(args.output, args.overwrite, [args.input])
  count = predict(_task_config(args), args.workdir, args.input, args.output)
  print(f"wrote {count} predictions to {args.output}")


def _generate(args: argparse.Namespace) -> None:
  from flaxbert.finetune.job import generate_file  # pylint: disable=import-outside-toplevel
  check_output_file(args.output, args.overwrite, [args.input])
  count = generate_file(args.model, args.input, args.output, args.beam_size, args.length_penalty, args.batch_size)
  print(f"wrote {count} lines to {args.output}")


def _sweep(args: argparse.Namespace) -> None:
  from flaxbert.finetune.sweep import run_sweep  # pylint: disable=import-outside-toplevel
  summary = run_sweep(_task_config(args), args.workdir)
  best = summary["best"]
  print(f"best {summary['metric']} {best['results'][summary['metric']]:.4f} at {best['name']}; "
        f"all points in {os.path.join(args.workdir, 'sweep_results.json')}")


def _embed(args: argparse.Namespace) -> None:
  from flaxbert.finetune.embed import embed_file  # pylint: disable=import-outside-toplevel
  check_output_file(args.output, args.overwrite, [args.input])
  vectors = embed_file(args.model, args.input, args.output, args.pooling, args.max_seq_length, args.batch_size)
  print(f"wrote {vectors.shape[0]} vectors of size {vectors.shape[1]} to {args.output}")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="flaxbert", description="BERT in JAX/Flax.", allow_abbrev=False)
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  p = commands.add_parser("convert", allow_abbrev=False, help="convert weights between flaxbert, HF and TF1 formats",
                          description="Detects SRC's kind (flaxbert dir, HF dir, TF1 checkpoint) and "
                                      "writes it to DST in the --to format. A fine-tuning workdir "
                                      "exports (--to hf) to its transformers class: "
                                      "BertForSequenceClassification (classification, regression), "
                                      "BertForTokenClassification (ner), BertForQuestionAnswering "
                                      "(squad), BertModel (similarity), EncoderDecoderModel "
                                      "(translation, summarization_abstractive).")
  p.add_argument("src", metavar="SRC")
  p.add_argument("dst", metavar="DST")
  p.add_argument("--to", required=True, choices=("flaxbert", "hf", "tf1"))
  p.add_argument("--overwrite", action="store_true", help="replace DST if it exists (only once DST is complete)")
  p.set_defaults(run=_convert)

  p = commands.add_parser("prepare", allow_abbrev=False, help="build a masked-LM / sentence-pair TFDS dataset from text",
                          description="Tokenizes a corpus and writes BERT pretraining examples "
                                      "(create_pretraining_data.py's algorithm) as a TFDS dataset. "
                                      "Settings: --config prepare[:VARIANT] (configs/prepare.py); --config.KEY=VALUE "
                                      "overrides any.")
  p.add_argument("--config", help="prepare[:original|dynamic|tiny] (a packaged config; or a file PATH.py[:ARG]; "
                                  "default: prepare)")
  for name, kwargs in _PREPARE_FLAGS.items():
    p.add_argument(f"--{name}", **kwargs)
  p.set_defaults(run=_prepare)

  p = commands.add_parser("pretrain", allow_abbrev=False, help="pretrain BERT (MLM + NSP) on a prepared dataset",
                          description="Runs train_and_evaluate(config, workdir); rerunning resumes from "
                                      "the workdir. Settings: --config pretrain:ARG (configs/pretrain.py); "
                                      "--config.KEY=VALUE overrides.")
  p.add_argument("--config", help="pretrain:SIZE|paper|paper_phase2|mlperf_phase2|demo (a packaged config; or a "
                                  "file PATH.py[:ARG]; default: pretrain:tiny)")
  p.add_argument("--workdir", required=True, help="checkpoints, TensorBoard events, summary.json")
  p.set_defaults(run=_pretrain)

  tasks = "|".join(TASKS)
  for name, run, text in (
      ("finetune", _finetune, "fine-tune a pretrained BERT on a task; dev scores to WORKDIR/eval_results.json"),
      ("evaluate", _evaluate, "score a fine-tuning workdir's model on --config.eval_path"),
      ("predict", _predict, "write a fine-tuning workdir's predictions for --input to --output"),
      ("sweep", _sweep, "run the paper's lr × batch × epochs grid; best dev score to WORKDIR/sweep_results.json")):
    p = commands.add_parser(name, allow_abbrev=False, help=text,
                            description=f"{text[0].upper()}{text[1:]}. Settings: --config finetune:TASK; "
                                        "--config.KEY=VALUE overrides any (init, train_path, eval_path, "
                                        "optim.learning_rate, num_epochs, batch_size, max_seq_length, seed, …).")
    p.add_argument("--config", help=f"finetune:TASK with TASK one of {tasks} (a packaged config; or a file "
                                    "PATH.py[:ARG]; default finetune:glue_sst2)")
    p.add_argument("--workdir", required=True, help="checkpoints, task.json, eval_results.json, predictions" + (
        "; or a transformers BertForSequenceClassification / TokenClassification / QuestionAnswering folder"
        if name in ("evaluate", "predict") else ""))
    if name == "predict":
      p.add_argument("--input", required=True, help="a file in the task's training format (labels optional)")
      p.add_argument("--output", required=True, help="predictions file to write")
      p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_FILE)
    p.set_defaults(run=run)

  p = commands.add_parser("generate", allow_abbrev=False, help="translate/summarize: one output line per input line",
                          description="Decodes every line of --input with a translation or "
                                      "summarization_abstractive workdir's encoder-decoder (beam search with a "
                                      "key/value cache) and writes one line per input line to --output.")
  p.add_argument("--model", required=True, help="a `flaxbert finetune` workdir of an encoder-decoder task")
  p.add_argument("--input", required=True, help="text file, one source a line (.gz too)")
  p.add_argument("--output", required=True, help="the hypotheses file to write")
  p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_FILE)
  p.add_argument("--beam_size", type=int, help="beams (1: greedy; default: what the workdir was trained with)")
  p.add_argument("--length_penalty", type=float, help="GNMT alpha (default: what the workdir was trained with)")
  p.add_argument("--batch_size", type=int, help="sources decoded at once (default: the workdir's eval_batch_size)")
  p.set_defaults(run=_generate)

  p = commands.add_parser("embed", allow_abbrev=False, help="sentences → L2-normalised vectors (.npy)",
                          description="Embeds one sentence per line of --input with any BERT checkpoint "
                                      "or a fine-tuning workdir, and saves a float32 [N, hidden] .npy.")
  p.add_argument("--model", required=True, help="flaxbert dir/workdir, HF dir, TF1 checkpoint or finetune workdir")
  p.add_argument("--input", required=True, help="text file, one sentence per line")
  p.add_argument("--output", required=True, help="the .npy file to write")
  p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_FILE)
  p.add_argument("--pooling", default="mean", choices=("mean", "cls"))
  p.add_argument("--max_seq_length", type=int, default=128)
  p.add_argument("--batch_size", type=int, default=64)
  p.set_defaults(run=_embed)
  return parser


# Commands that run the training loop: a SIGTERM/SIGINT while they start waits for the loop, which
# stops every process at the same step (flaxbert.training.stop_signals).
_TRAINING = ("pretrain", "finetune", "sweep")


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it writes at INFO
  parser = build_parser()
  args, unknown = parser.parse_known_args(argv)
  args.overrides = [a[len("--config."):] for a in unknown if a.startswith("--config.")]
  rest = [a for a in unknown if not a.startswith("--config.")]
  if rest:
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  try:
    with stop_signals.deferred() if args.command in _TRAINING else contextlib.nullcontext():
      return args.run(args) or 0
  except InputError as e:
    print(f"flaxbert {args.command}: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # the machine's storage (disk full, read-only, permissions), not a bug
    where = f"{e.filename}: " if e.filename else ""
    print(f"flaxbert {args.command}: error: {where}{e.strerror or e} (nothing already saved was changed)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
  from flaxbert.launch import reexec_with_hugepages
  reexec_with_hugepages()
  sys.exit(main())
