"""Where flaxbert's pretraining step spends its time: one state, the same batch, several variants.

  python bench/step_ablation.py [--size base] [--batch 256] [--seq 128] [--dtype bfloat16]
      [--steps 20] [--out bench/out/step_ablation.json]

The state is initialised once (`create_train_state`) and flows from variant to variant; each
variant is flaxbert's jitted, donated `pretraining_step` for the same parameters with one thing
changed — the dropout PRNG (threefry2x32 or unsafe_rbg), the attention dropout (0 makes the
attention `jax.nn.dot_product_attention`, cuDNN flash attention for bf16 on a GPU), the hidden
dropout — and is timed for --steps synchronised steps (median) after its compile. Each variant's
line is printed as soon as it is measured, so a run cut short still tells what it measured; a
variant that fails to compile or run is reported with its error and the next one runs.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from bench.compare_train_step import (  # noqa: E402
    add_single_run_arguments, default_predictions, make_batch, optimizer_config)
from flaxbert.models.config import BertConfig  # noqa: E402
from flaxbert.models.pretraining import build_model  # noqa: E402
from flaxbert.pretrain.job import jit_pretraining_step  # noqa: E402
from flaxbert.training import flops, optim, sharding  # noqa: E402
from flaxbert.training.state import create_train_state  # noqa: E402

# name: (dropout PRNG, hidden dropout, attention dropout); the first is BERT's recipe.
VARIANTS = {
    "no dropout (compute + optimizer only)": ("threefry2x32", 0.0, 0.0),
    "unsafe_rbg dropout": ("unsafe_rbg", 0.1, 0.1),
    "unsafe_rbg, attention dropout 0": ("unsafe_rbg", 0.1, 0.0),
    "threefry, attention dropout 0": ("threefry2x32", 0.1, 0.0),
    "BERT: threefry dropout 0.1 / 0.1": ("threefry2x32", 0.1, 0.1),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_single_run_arguments(parser, steps=20)
  parser.add_argument("--out", type=Path, default=Path("bench/out/step_ablation.json"))
  args = parser.parse_args()
  predictions = default_predictions(args.seq)
  base_cfg = BertConfig.from_size(args.size, dtype=args.dtype, max_position_embeddings=max(512, args.seq))
  data = make_batch(args.batch, args.seq, base_cfg.vocab_size, predictions, 0)
  opt = optimizer_config(args.size)
  tx, schedule = optim.build_optimizer(opt), optim.learning_rate_schedule(opt)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1)), jax.devices()[:1])
  start = time.perf_counter()
  state, shardings = create_train_state(build_model(base_cfg), tx, mesh, sharding.DATA_PARALLEL, 0,
                                        (jax.ShapeDtypeStruct((1, args.seq), jnp.int32),))
  jax.block_until_ready(state)
  device = jax.devices()[0]
  report = {"device_kind": device.device_kind, "jax": jax.__version__, "size": args.size, "batch": args.batch,
            "seq": args.seq, "dtype": args.dtype, "init_s": round(time.perf_counter() - start, 2), "variants": []}
  print(f"{device.device_kind}: {args.size} batch {args.batch} seq {args.seq} {args.dtype}; init "
        f"{report['init_s']} s", flush=True)
  step_flops = flops.bert_flops_per_sequence(base_cfg, args.seq, predictions) * args.batch
  peak = flops.peak_flops(device.device_kind, args.dtype)
  batch = sharding.global_batch(data, mesh)
  for name, (rng_impl, hidden, attn) in VARIANTS.items():
    row = {"variant": name, "rng_impl": rng_impl, "hidden_dropout": hidden, "attention_dropout": attn}
    try:
      cfg = BertConfig.from_size(args.size, dtype=args.dtype, max_position_embeddings=max(512, args.seq),
                                 hidden_dropout_prob=hidden, attention_probs_dropout_prob=attn)
      if state.rng_impl != rng_impl:
        state = state.replace(rng=jax.random.key_data(jax.random.key(1, impl=rng_impl)), rng_impl=rng_impl)
      shardings = shardings.replace(rng_impl=rng_impl)
      step = jit_pretraining_step(build_model(cfg), tx, schedule, 1, True, shardings, mesh)
      start = time.perf_counter()
      compiled = step.lower(state, batch).compile()
      row["compile_s"] = round(time.perf_counter() - start, 2)
      for _ in range(2):
        state, out = compiled(state, batch)
      jax.block_until_ready(out)
      times = []
      for _ in range(args.steps):
        start = time.perf_counter()
        state, out = compiled(state, batch)
        jax.block_until_ready((state.step, out["loss"]))
        times.append(time.perf_counter() - start)
      step_s = statistics.median(times)
      row.update(step_ms=round(1e3 * step_s, 2), seq_per_s=round(args.batch / step_s, 1),
                 spread_ms=[round(1e3 * min(times), 2), round(1e3 * max(times), 2)],
                 mfu=round(flops.mfu(step_flops, step_s, peak, 1), 4) if peak else None,
                 loss=round(float(out["loss"]), 4))
    except Exception as e:  # noqa: BLE001 — a failing variant is reported, the others still run
      row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
    report["variants"].append(row)
    print(json.dumps(row), flush=True)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
