"""How much do an encoder's sentence vectors depend on the sentence? A check for collapsed
representations after short pretraining (docs/time_to_quality.md).

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
With --probe TRAIN.tsv (a labelled table: --text_column, --label_column, as fine-tuning reads it),
also how much of a label the frozen vectors carry linearly: an L2-regularized logistic regression
(`probe_accuracy`) fit on TRAIN's standardized vectors and scored on every row of --sentences
(which must then be labelled too); its L2 strength is chosen from a grid on the last --probe_select
rows of TRAIN, held out from that fit.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from flaxbert.finetune.embed import Embedder, read_lines  # noqa: E402
from flaxbert.finetune.tasks.readers import read_table, text_lines  # noqa: E402

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # the probe's L2 strengths, per example


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


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 30) -> np.ndarray:
  """Multinomial logistic regression by Newton's method: weights (features + 1, classes − 1), the
  last class the reference; minimizes mean cross-entropy + l2/2 ‖W‖² (the bias unpenalized)."""
  x = with_bias(x)
  k, d = int(y.max()) + 1, x.shape[1]
  w, target = np.zeros((d, k - 1)), np.eye(k)[y][:, :-1]
  penalty = np.kron(np.eye(k - 1), np.diag([l2] * (d - 1) + [0.0]))
  for _ in range(iterations):
    p = probabilities(x, w)[:, :-1]
    grad = (x.T @ (p - target) / len(x)).T.reshape(-1) + penalty @ w.T.reshape(-1)
    hessian = np.zeros(((k - 1) * d, (k - 1) * d))
    for a in range(k - 1):
      for b in range(k - 1):
        weight = p[:, a] * ((a == b) - p[:, b])
        hessian[a * d:(a + 1) * d, b * d:(b + 1) * d] = (x * weight[:, None]).T @ x / len(x)
    step = np.linalg.solve(hessian + penalty + 1e-9 * np.eye(len(penalty)), grad)
    w -= step.reshape(k - 1, d).T
    if np.abs(step).max() < 1e-8:
      break
  return w


def with_bias(x: np.ndarray) -> np.ndarray:
  return np.hstack([x, np.ones((len(x), 1))])


def probabilities(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Class probabilities for rows of x that end in the bias 1 (with_bias)."""
  logits = np.hstack([x @ w, np.zeros((len(x), 1))])
  e = np.exp(logits - logits.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def probe_accuracy(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray,
                   select: int) -> dict:
  """The module docstring's linear probe: the L2 strength chosen on train's last `select` rows,
  then a fit on all of train, scored on test."""
  mean, scale = train.mean(0), train.std(0) + 1e-12
  a, b = (train - mean) / scale, (test - mean) / scale
  fit, held, fit_y, held_y = a[:-select], a[-select:], train_y[:-select], train_y[-select:]
  chosen = max(L2_GRID, key=lambda l2: (accuracy(held, held_y, fit_logistic(fit, fit_y, l2)), l2))
  return {"probe_accuracy": accuracy(b, test_y, fit_logistic(a, train_y, chosen)), "probe_l2": chosen}


def accuracy(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
  return float((probabilities(with_bias(x), w).argmax(1) == y).mean())


def named_paths(spec: str, option: str) -> dict[str, str]:
  """`name=path,…` as {name: path}; SystemExit naming `option` and the items that are not name=path."""
  items = [item for item in spec.split(",") if item]
  bad = [item for item in items if "=" not in item]
  if bad or not items:
    raise SystemExit(f"{option}: {bad or spec!r}: expected name=path[,name=path…]")
  return dict(item.split("=", 1) for item in items)


def labelled(path: Path, text: str, label: str) -> tuple[list[str], list[str]]:
  examples = read_table(path, text, None, label, labelled=True)
  return [e.text_a for e in examples], [str(e.label) for e in examples]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", required=True, help="name=path,… (flaxbert dir/workdir, HF dir, TF1 checkpoint)")
  parser.add_argument("--sentences", type=Path, required=True, help="a TSV (first column) or a text file")
  parser.add_argument("--limit", type=int, default=300)
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--probe", type=Path, default=None, help="a labelled training table for the linear probe")
  parser.add_argument("--text_column", default="sentence", help="the probe tables' text column")
  parser.add_argument("--label_column", default="label", help="the probe tables' label column")
  parser.add_argument("--probe_select", type=int, default=1000, help="TRAIN rows held out to choose the L2")
  parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "sentence_vector_spread.json")
  args = parser.parse_args()
  models = named_paths(args.models, "--models")
  sentences = read_sentences(args.sentences, args.limit)
  report = {"command": "bench/sentence_vector_spread.py " + " ".join(sys.argv[1:]), "sentences": len(sentences),
            "models": {}}
  if args.probe:
    (train, train_labels), (test, test_labels) = (labelled(p, args.text_column, args.label_column)
                                                  for p in (args.probe, args.sentences))
    classes = sorted(set(train_labels))
    unseen = sorted(set(test_labels) - set(classes))
    if unseen:
      raise SystemExit(f"--sentences {args.sentences}: labels {unseen} are not among --probe {args.probe}'s "
                       f"classes {classes}")
    if not 0 < args.probe_select < len(train) - 1:
      raise SystemExit(f"--probe_select {args.probe_select}: expected 1 to {len(train) - 2} "
                       f"(--probe {args.probe} has {len(train)} rows)")
    train_y, test_y = (np.array([classes.index(v) for v in labels]) for labels in (train_labels, test_labels))
    report.update(probe_train=len(train), probe_test=len(test), probe_classes=classes)
  for name, path in models.items():
    report["models"][name] = {"path": path}
    for pooling in ("cls", "mean"):
      embedder = Embedder(path, pooling, args.max_seq_length)
      report["models"][name][pooling] = spread_of(embedder.embed(sentences))
      if args.probe:
        report["models"][name][pooling].update(probe_accuracy(
            embedder.embed(train), train_y, embedder.embed(test), test_y, args.probe_select))
      print(name, pooling, json.dumps(report["models"][name][pooling]), flush=True)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
