"""What checkpoint integrity costs: digests written at save and verified at restore, at a model size.

  .venv/bin/python bench/checkpoint_integrity.py [--size base] [--repeats 3] [--out bench/results/checkpoint_integrity.json]

Saves one full pretraining checkpoint (params + AdamW state, float32) of BERT-SIZE through
flaxbert.training.checkpoint, then times, in the same run: Orbax's save; sealing it (the SHA-256
of every file, integrity.seal); a resume's restore (params + optimizer state) with verification and
without it (integrity.verify patched out), alternating the two; and verification alone. The JSON
gives each median and the ratios verify/restore and seal/save. Files are read from the page cache
after the first pass (this machine cannot drop it), which is a restore's best case; on cold
storage reading dominates both sides alike.
"""
import argparse
import datetime
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from flaxbert.models.config import BertConfig  # noqa: E402
from flaxbert.models.pretraining import BertForPreTraining  # noqa: E402
from flaxbert.training import checkpoint, integrity  # noqa: E402
from flaxbert.training.state import boxed_param_shapes  # noqa: E402


def state_of_size(size: str) -> tuple[dict, dict]:
  """Random float32 params of BERT-SIZE (vocab 30522, NSP heads) and an AdamW state of their shape."""
  cfg = BertConfig.from_size(size, vocab_size=30522)
  shapes = nn.unbox(boxed_param_shapes(BertForPreTraining(cfg), (jax.ShapeDtypeStruct((1, 128), jnp.int32),)))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape, np.float32) * 0.02, shapes)
  train = {"step": np.int32(1000), "opt_state": {"mu": jax.tree_util.tree_map(np.copy, params),
                                                  "nu": jax.tree_util.tree_map(np.abs, params)}}
  return params, train


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="base")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="bench/results/checkpoint_integrity.json")
  args = parser.parse_args()
  params, train = state_of_size(args.size)
  nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves((params, train)))
  work = Path(tempfile.mkdtemp(prefix="ckpt_integrity_", dir="."))
  try:
    mngr = checkpoint.manager(work, asynchronous=False)
    t = time.perf_counter()
    mngr.save(1, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train),
        meta=ocp.args.JsonSave({"step": 1})))
    mngr.wait_until_finished()
    save_s = time.perf_counter() - t
    step_dir = work / checkpoint.CHECKPOINTS / "1"
    seal_s = []
    for _ in range(args.repeats):
      (step_dir / integrity.DIGEST_FILE).unlink(missing_ok=True)
      t = time.perf_counter()
      integrity.seal(step_dir)
      seal_s.append(time.perf_counter() - t)
    verify_s, with_s, without_s = [], [], []
    real_verify = integrity.verify
    for _ in range(args.repeats):
      t = time.perf_counter()
      assert real_verify(step_dir, ("params", "train", "meta")) is None
      verify_s.append(time.perf_counter() - t)
      for verified, times in ((True, with_s), (False, without_s)):
        integrity.verify = real_verify if verified else (lambda *a: None)
        t = time.perf_counter()
        found = checkpoint.restore_latest(mngr, params, train)
        jax.block_until_ready(found[1])
        times.append(time.perf_counter() - t)
    integrity.verify = real_verify
    mngr.close()
  finally:
    shutil.rmtree(work, ignore_errors=True)
  med = {k: statistics.median(v) for k, v in (("seal_s", seal_s), ("verify_s", verify_s),
                                              ("restore_verified_s", with_s), ("restore_unverified_s", without_s))}
  result = {"date": datetime.date.today().isoformat(), "size": args.size, "checkpoint_bytes": int(nbytes),
            "save_s": save_s, **med, "runs": {"seal_s": seal_s, "verify_s": verify_s,
                                              "restore_verified_s": with_s, "restore_unverified_s": without_s},
            "verify_over_unverified_restore": med["verify_s"] / med["restore_unverified_s"],
            "restore_verified_over_unverified": med["restore_verified_s"] / med["restore_unverified_s"],
            "seal_over_save": med["seal_s"] / save_s,
            "verify_gb_per_s": nbytes / med["verify_s"] / 1e9,
            "command": f"bench/checkpoint_integrity.py --size {args.size} --repeats {args.repeats}"}
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
