"""flaxbert's attention without dropout on a GPU: cuDNN flash attention checked and timed against XLA.

  python bench/gpu_attention.py [--out bench/out/gpu_attention.json] [--repeats 20]

`flaxbert.models.encoder.attention` (inference, and training with attention dropout 0 as in MosaicBERT and
cramming) runs `jax.nn.dot_product_attention` with `attention_implementation(...)`: cuDNN for
bf16/fp16 on a GPU where cuDNN takes the shapes (even lengths, head width ≤ 128), XLA elsewhere.
For each case below (BERT base heads: 12 × 64) this draws fresh
random bf16 inputs and a mask of the kind flaxbert builds, and checks the output and the gradients
of q, k, v against a float32 XLA reference (‖x − ref‖ / ‖ref‖ at most --tolerance, no NaN):

  padding   self-attention, rows padded to random lengths (`model.attention_segments` of a 0/1 mask)
  packed    self-attention over sequence-packed rows (examples 1, 2, 3 side by side, then padding)
  cross     a decoder's cross-attention: T queries over S ≠ T padded source keys (T even: cuDNN;
            T odd: the XLA fallback)
  causal    a decoder's self-attention: causal and padded

It then times forward + backward (jitted, median of --repeats) of the chosen implementation and of
XLA on the padding case at the pretraining shapes (seq 128 batch 256, seq 512 batch 64). On a CPU
the chosen implementation is XLA, so the check compares bf16 XLA with float32 XLA and the timing
is skipped. Exit status 1 when a check fails.
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
import numpy as np  # noqa: E402

from flaxbert.models.encoder import attention, attention_implementation, attention_segments  # noqa: E402

HEADS, HEAD_DIM = 12, 64


def make_mask(kind: str, batch: int, t: int, s: int, rng: np.random.RandomState) -> np.ndarray:
  """A [B, 1, T, S] boolean mask in which every query row sees at least one key."""
  if kind == "padding":
    lengths = rng.randint(t // 2, t + 1, batch)
    return np.asarray(attention_segments((np.arange(t)[None] < lengths[:, None]).astype(np.int32)))
  if kind == "packed":
    ends = np.sort(rng.randint(t // 4, t + 1, (batch, 3)), axis=1)
    return np.asarray(attention_segments((np.arange(t)[None, :, None] < ends[:, None, :]).sum(-1)))
  keys = np.arange(s)[None] < rng.randint(s // 2, s + 1, batch)[:, None]  # [B, S] real source keys
  if kind == "cross":
    return np.broadcast_to(keys[:, None, None, :], (batch, 1, t, s)).copy()
  if kind == "causal":
    causal = np.tril(np.ones((t, s), bool))[None, None]
    return (causal & keys[:, None, None, :]) | np.eye(t, s, dtype=bool)[None, None]
  raise ValueError(kind)


def rel_err(x, ref) -> float:
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def check(kind: str, batch: int, t: int, s: int, seed: int) -> dict:
  rng = np.random.RandomState(seed)
  q, k, v, cot = (rng.standard_normal(shape).astype(np.float32)
                  for shape in ((batch, t, HEADS, HEAD_DIM), (batch, s, HEADS, HEAD_DIM),
                                (batch, s, HEADS, HEAD_DIM), (batch, t, HEADS, HEAD_DIM)))
  mask = jnp.asarray(make_mask(kind, batch, t, s, rng))

  def loss(fn, dtype):
    return lambda q, k, v: jnp.sum(fn(q.astype(dtype), k.astype(dtype), v.astype(dtype)).astype(jnp.float32) * cot)

  ours = lambda q, k, v: attention(q, k, v, mask, dropout_rate=0.0, deterministic=True)  # noqa: E731
  with jax.default_matmul_precision("highest"):
    reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")  # noqa: E731
    ref_out = jax.jit(reference)(q, k, v)
    ref_grads = jax.jit(jax.grad(loss(reference, jnp.float32), argnums=(0, 1, 2)))(q, k, v)
  out = jax.jit(ours)(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  grads = jax.jit(jax.grad(loss(ours, jnp.bfloat16), argnums=(0, 1, 2)))(q, k, v)
  errors = {"out": rel_err(out, ref_out), **{f"d{n}": rel_err(g, r) for n, g, r in zip("qkv", grads, ref_grads)}}
  return {"kind": kind, "batch": batch, "t": t, "s": s,
          "implementation": attention_implementation(q.shape, s, jnp.bfloat16) or "xla",
          "rel_errors": {n: round(e, 6) for n, e in errors.items()}, "finite": all(np.isfinite(list(errors.values())))}


def time_fwd_bwd(implementation: str | None, batch: int, t: int, repeats: int) -> float:
  rng = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rng.standard_normal((batch, t, HEADS, HEAD_DIM)), jnp.bfloat16) for _ in range(3))
  mask = jnp.asarray(make_mask("padding", batch, t, t, rng))
  def fn(q, k, v):
    return jnp.sum(jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation).astype(jnp.float32))
  step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
  jax.block_until_ready(step(q, k, v))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(q, k, v))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=Path, default=Path("bench/out/gpu_attention.json"))
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--tolerance", type=float, default=2e-2, help="largest relative error accepted (bf16 inputs)")
  args = parser.parse_args()
  device = jax.devices()[0]
  checks = [check("padding", 8, 128, 128, 0), check("padding", 4, 512, 512, 1), check("packed", 8, 128, 128, 2),
            check("cross", 8, 36, 48, 3), check("cross", 8, 37, 48, 5), check("causal", 8, 64, 64, 4)]
  ok = all(c["finite"] and max(c["rel_errors"].values()) <= args.tolerance for c in checks)
  chosen = attention_implementation((256, 128, HEADS, HEAD_DIM), 128, jnp.bfloat16)
  timings = []
  if chosen is not None:
    for batch, t in ((256, 128), (64, 512)):
      xla_s, chosen_s = time_fwd_bwd("xla", batch, t, args.repeats), time_fwd_bwd(chosen, batch, t, args.repeats)
      timings.append({"batch": batch, "seq": t, "xla_ms": round(1e3 * xla_s, 3),
                      f"{chosen}_ms": round(1e3 * chosen_s, 3),
                      "speedup": round(xla_s / chosen_s, 3)})
  report = {"device_kind": device.device_kind, "platform": device.platform, "jax": jax.__version__,
            "implementation": chosen or "xla", "tolerance": args.tolerance, "passed": ok, "checks": checks,
            "fwd_bwd_timings": timings or "skipped: no GPU, XLA is the only implementation",
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(report, indent=2) + "\n")
  print(f"{device.device_kind} ({device.platform}), attention implementation for bf16: {chosen or 'xla'}")
  for c in checks:
    print(f"  {c['kind']:8s} B={c['batch']:<3d} T={c['t']:<4d} S={c['s']:<4d} {c['implementation']:5s} rel errors "
          + " ".join(f"{n}={e:.2e}" for n, e in c["rel_errors"].items()))
  for row in timings:
    print(f"  fwd+bwd seq {row['seq']} batch {row['batch']}: xla {row['xla_ms']} ms, {chosen} "
          f"{row[f'{chosen}_ms']} ms ({row['speedup']}x)")
  print(("PASSED" if ok else "FAILED") + f" (tolerance {args.tolerance}); wrote {args.out}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
