"""The `flaxbert` command: parses arguments and calls the library; no work happens here."""
import argparse
import logging
import sys

from flaxbert.errors import InputError


def _convert(args: argparse.Namespace) -> None:
  from flaxbert.pretrained import convert  # pylint: disable=import-outside-toplevel
  loaded = convert(args.src, args.dst, args.to, overwrite=args.overwrite)
  cfg = loaded.config
  print(f"converted {loaded.kind} → {args.to}: {args.dst} (L{cfg.num_hidden_layers}/H{cfg.hidden_size}, "
        f"{'with' if loaded.heads else 'without'} pretraining heads"
        f"{', vocab.txt copied' if loaded.vocab else ''})")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="flaxbert", description="BERT in JAX/Flax.")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  p = commands.add_parser("convert", help="convert weights between flaxbert, HF and TF1 formats",
                          description="Detects SRC's kind (flaxbert dir, HF dir, TF1 checkpoint) and "
                                      "writes it to DST in the --to format.")
  p.add_argument("src", metavar="SRC")
  p.add_argument("dst", metavar="DST")
  p.add_argument("--to", required=True, choices=("flaxbert", "hf", "tf1"))
  p.add_argument("--overwrite", action="store_true", help="replace DST if it exists (only once DST is complete)")
  p.set_defaults(run=_convert)
  return parser


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it writes at INFO
  args = build_parser().parse_args(argv)
  try:
    args.run(args)
  except InputError as e:
    print(f"flaxbert {args.command}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
