"""Metrics: sums and counts, FLOPs and MFU, event files and JSONL, progress line, divergence check."""
import io
import json
import math

import jax.numpy as jnp
import pytest

from flaxbert import metrics
from flaxbert.config import BertConfig


def test_accumulate_on_device_then_summarize():
  acc = metrics.MetricsAccumulator()
  acc.add({"mlm_loss_sum": jnp.array(6.0), "mlm_correct": jnp.array(1.0), "mlm_count": jnp.array(3.0),
           "nsp_loss_sum": jnp.array(2.0), "nsp_correct": jnp.array(1.0), "nsp_count": jnp.array(2.0),
           "loss": jnp.array(4.0), "learning_rate": jnp.array(1.0)})
  acc.add({"mlm_loss_sum": jnp.array(2.0), "mlm_correct": jnp.array(3.0), "mlm_count": jnp.array(1.0),
           "nsp_loss_sum": jnp.array(0.0), "nsp_correct": jnp.array(2.0), "nsp_count": jnp.array(2.0),
           "loss": jnp.array(2.0), "learning_rate": jnp.array(3.0)})
  assert isinstance(acc.sums["loss"], jnp.ndarray) and acc.steps == 2
  s = metrics.summarize(acc.sums, acc.steps)
  assert s == pytest.approx({"mlm_loss": 2.0, "mlm_accuracy": 1.0, "nsp_loss": 0.5, "nsp_accuracy": 0.75,
                             "loss": 3.0, "learning_rate": 2.0})


def test_flops_of_bert_base():
  cfg = BertConfig.from_size("base")
  h, i, v, t, p = 768, 3072, 30522, 128, 20
  forward = 12 * (2 * t * (4 * h * h + 2 * h * i) + 4 * t * t * h) + p * 2 * (h * h + h * v) + 2 * (h * h + 2 * h)
  assert metrics.bert_flops_per_sequence(cfg, 128, 20) == 3 * forward
  assert metrics.bert_flops_per_sequence(cfg, 128, 20, training=False) == forward
  every = metrics.bert_flops_per_sequence(cfg, 128, None)  # transformers' way: logits at all 128 positions
  assert every == 3 * (forward + (t - p) * 2 * (h * h + h * v))
  assert every / metrics.bert_flops_per_sequence(cfg, 128, 20) == pytest.approx(1.2227, abs=1e-4)


def test_peaks_and_mfu():
  assert metrics.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert metrics.peak_flops("NVIDIA H200", "bfloat16") == 989e12
  assert metrics.peak_flops("TPU v4", "bfloat16") == 275e12
  assert metrics.peak_flops("cpu", "float32") is None
  assert metrics.mfu(2e12, 1e12, 4) == 0.5
  peak = metrics.measure_matmul_peak("float32", size=256, seconds=0.2)
  assert math.isfinite(peak) and peak > 1e8


def test_writer_events_and_jsonl(tmp_path):
  writer = metrics.MetricWriter(tmp_path)
  writer.write_scalars(10, {"loss": 1.5, "mlm_accuracy": 0.25})
  writer.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows == [{"step": 10, "loss": 1.5, "mlm_accuracy": 0.25}]
  events = list(tmp_path.glob("events.out.tfevents*"))
  assert events
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  data = events[0].read_bytes()
  found, pos = {}, 0
  while pos < len(data):  # TFRecord framing: length (8), crc (4), payload, crc (4)
    length = int.from_bytes(data[pos:pos + 8], "little")
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    pos += 16 + length
    for value in event.summary.value:
      found[(event.step, value.tag)] = value.simple_value
  assert found[(10, "loss")] == pytest.approx(1.5) and found[(10, "mlm_accuracy")] == pytest.approx(0.25)


def test_progress_line_and_eta_on_a_fake_clock():
  now = [100.0]
  out = io.StringIO()
  bar = metrics.ProgressBar(total=1000, start=0, batch_size=32, clock=lambda: now[0], stream=out)
  bar.mark_compiled(1)  # compile time before this is not counted
  now[0] += 10.0
  line = bar.update(101, {"loss": 6.21, "mlm_accuracy": 0.132})
  assert line.startswith("step 101/1000 [ 10%] loss 6.21 mlm_acc 0.132")
  assert "| 320.0 seq/s | ETA 1m29s" in line  # 100 steps in 10 s; 899 to go
  assert out.getvalue().strip() == line


def test_check_finite():
  metrics.check_finite({"loss": 1.0, "mlm_loss": 0.5}, 3)
  with pytest.raises(FloatingPointError, match="loss is nan at step 7"):
    metrics.check_finite({"loss": float("nan")}, 7)
  with pytest.raises(FloatingPointError, match="mlm_loss is inf"):
    metrics.check_finite({"loss": 1.0, "mlm_loss": float("inf")}, 7)
