"""How much do an encoder's sentence vectors depend on the sentence? A check for collapsed
representations after short pretraining (docs/pretraining.md, "Time to quality").

  .venv/bin/python bench/sentence_vector_spread.py --models random=DIR,flaxbert=DIR[,…]
      --sentences ../shared/data/glue-sst2/dev.tsv [--limit 300] [--out bench/out/sentence_vector_spread.json]

For each model (a flaxbert dir/workdir, HF dir or TF1 checkpoint, read by `flaxbert embed`'s
Embedder) and pooling ([CLS] state, mean over the mask), over the first --limit sentences (a TSV's
first column after its header, or a text file's lines):
  mean_pairwise_cosine  the mean cosine between the unit vectors of two different sentences (1: every
                        sentence gets the same vector);
  spread                the mean distance of the unit vectors from their centroid;
  top_direction_share   the share of that variance along its first principal direction (1: the
                        vectors differ along one line only; an isotropic cloud in H dimensions: ~1/H;
                        null: all the vectors are the same).
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from flaxbert.finetune.embed import Embedder, read_lines  # noqa: E402
from flaxbert.finetune.tasks.readers import text_lines  # noqa: E402


def read_sentences(path: Path, limit: int) -> list[str]:
  """A TSV's first column after its header (blank lines skipped), or a text file as `flaxbert
  embed --input` reads it (one sentence a line); the first `limit`."""
  if path.suffix == ".tsv":
    lines = [line.split("\t")[0].strip() for line in list(text_lines(path))[1:]]
  else:
    lines = read_lines(path)
  sentences = [line for line in lines if line.strip()][:limit]
  if len(sentences) < 2:
    raise SystemExit(f"--sentences {path}: {len(sentences)} sentences; expected at least 2")
  return sentences


def spread_of(vectors: np.ndarray) -> dict:
  """The three figures of the module docstring, each row first scaled to unit length."""
  u = np.asarray(vectors, np.float64)
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  n = len(u)
  cosine = ((u @ u.T).sum() - n) / (n * n - n)
  centred = u - u.mean(0)
  variance = np.linalg.svd(centred, compute_uv=False) ** 2
  share = float(variance[0] / variance.sum()) if variance.sum() > 1e-24 else None  # None: no variance to share
  return {"mean_pairwise_cosine": float(cosine), "spread": float(np.linalg.norm(centred, axis=1).mean()),
          "top_direction_share": share}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", required=True, help="name=path,… (flaxbert dir/workdir, HF dir, TF1 checkpoint)")
  parser.add_argument("--sentences", type=Path, required=True, help="a TSV (first column) or a text file")
  parser.add_argument("--limit", type=int, default=300)
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "sentence_vector_spread.json")
  args = parser.parse_args()
  items = [item for item in args.models.split(",") if item]
  bad = [item for item in items if "=" not in item]
  if bad or not items:
    raise SystemExit(f"--models: {bad or args.models!r}: expected name=path[,name=path…]")
  models = dict(item.split("=", 1) for item in items)
  sentences = read_sentences(args.sentences, args.limit)
  report = {"command": "bench/sentence_vector_spread.py " + " ".join(sys.argv[1:]), "sentences": len(sentences),
            "models": {}}
  for name, path in models.items():
    report["models"][name] = {"path": path}
    for pooling in ("cls", "mean"):
      vectors = Embedder(path, pooling, args.max_seq_length).embed(sentences)
      report["models"][name][pooling] = spread_of(vectors)
      print(name, pooling, json.dumps(report["models"][name][pooling]), flush=True)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
