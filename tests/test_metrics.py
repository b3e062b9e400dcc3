"""flaxbert.training.metrics and flops: sums and counts, FLOPs, peaks and MFU, event files and JSONL, progress, divergence."""
import io
import json
import math
import time

import jax
import jax.numpy as jnp
import pytest

from flaxbert.models.config import BertConfig
from flaxbert.training import flops, metrics


def _step(mlm_loss_sum, mlm_correct, mlm_count, nsp_loss_sum, nsp_correct, nsp_count, loss, grad_norm, lr):
  values = dict(mlm_loss_sum=mlm_loss_sum, mlm_correct=mlm_correct, mlm_count=mlm_count,
                nsp_loss_sum=nsp_loss_sum, nsp_correct=nsp_correct, nsp_count=nsp_count,
                loss=loss, grad_norm=grad_norm, param_norm=10.0, learning_rate=lr)
  return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


# --- sums and denominators ---------------------------------------------------------------------


def test_accumulate_then_summarize_exactly():
  acc = metrics.MetricsAccumulator()
  acc.add(_step(12.0, 3.0, 4.0, 1.5, 2.0, 2.0, loss=4.0, grad_norm=1.0, lr=1e-4))
  acc.add(_step(4.0, 5.0, 6.0, 0.5, 1.0, 2.0, loss=2.0, grad_norm=2.0, lr=2e-4))
  acc.add(_step(8.0, 0.0, 6.0, 2.0, 1.0, 4.0, loss=3.0, grad_norm=6.0, lr=3e-4))
  assert acc.steps == 3
  assert all(isinstance(v, jax.Array) for v in acc.sums.values())
  summary = metrics.summarize(acc.sums, acc.steps)
  # MLM: 24 nats and 8 correct over 16 masked tokens; NSP: 4 nats, 4 correct over 8 sequences.
  assert summary == {"mlm_loss": 1.5, "mlm_accuracy": 0.5, "nsp_loss": 0.5, "nsp_accuracy": 0.5,
                     "loss": 3.0, "grad_norm": 3.0, "param_norm": 10.0,
                     "learning_rate": pytest.approx(2e-4, rel=1e-6)}
  assert acc.summary() == summary


def test_accumulator_adds_without_host_transfers():
  steps = [_step(float(i), 1.0, 2.0, 0.5, 1.0, 1.0, loss=1.0, grad_norm=1.0, lr=1.0) for i in range(4)]
  jax.block_until_ready(steps)
  acc = metrics.MetricsAccumulator()
  with jax.transfer_guard("disallow"):  # any host<->device copy would raise here
    for step in steps:
      acc.add(step)
  assert float(acc.sums["mlm_loss_sum"]) == 0.0 + 1.0 + 2.0 + 3.0
  assert float(acc.sums["mlm_count"]) == 8.0


def test_summarize_skips_empty_groups_and_is_generic():
  no_nsp = {"mlm_loss_sum": 3.0, "mlm_correct": 1.0, "mlm_count": 2.0,
            "nsp_loss_sum": 0.0, "nsp_correct": 0.0, "nsp_count": 0.0, "loss": 5.0}
  assert metrics.summarize(no_nsp, 2) == {"mlm_loss": 1.5, "mlm_accuracy": 0.5, "loss": 2.5}
  assert metrics.summarize({"mlm_loss_sum": 3.0, "mlm_count": 2.0}, 1) == {"mlm_loss": 1.5}
  # A fine-tuning head: span_start_correct pairs with span_count (longest prefix with a count);
  # a NAME_count of its own takes precedence over the group's.
  squad = {"span_start_correct": 3.0, "span_end_correct": 1.0, "span_loss_sum": 8.0, "span_count": 4.0,
           "span_f1_sum": 3.0, "span_f1_count": 2.0, "loss": 1.0}
  assert metrics.summarize(squad, 1) == {"span_start_accuracy": 0.75, "span_end_accuracy": 0.25,
                                         "span_loss": 2.0, "span_f1": 1.5, "loss": 1.0}


def test_summarize_and_accumulator_reject_broken_dicts():
  with pytest.raises(ValueError, match="'ner_loss_sum' has no denominator.*'ner_count'"):
    metrics.summarize({"ner_loss_sum": 1.0, "mlm_count": 2.0}, 1)
  with pytest.raises(ValueError, match="steps must be at least 1"):
    metrics.summarize({"loss": 1.0}, 0)
  assert metrics.summarize({}, 0) == {}
  acc = metrics.MetricsAccumulator()
  acc.add({"loss": jnp.float32(1.0)})
  with pytest.raises(ValueError, match=r"missing \['loss'\], new \['los'\]"):
    acc.add({"los": jnp.float32(1.0)})


# --- FLOPs, peaks, MFU -------------------------------------------------------------------------


def test_flops_of_bert_base_by_hand():
  cfg = BertConfig.from_size("base")  # L=12, H=768, I=3072, V=30522
  # Per layer: projections 2·128·(4·768² + 2·768·3072) = 1,811,939,328
  #            attention   2·2·128²·768                 =    50,331,648
  per_layer = 2 * 128 * (4 * 768 * 768 + 2 * 768 * 3072) + 2 * 2 * 128 * 128 * 768
  assert per_layer == 1_862_270_976
  mlm_20 = 20 * 2 * (768 * 768 + 768 * 30522)  # 961,228,800
  nsp = 2 * (768 * 768 + 768 * 2)  # 1,182,720
  forward = 12 * per_layer + mlm_20 + nsp
  assert forward == 23_309_663_232
  assert flops.bert_flops_per_sequence(cfg, 128, 20) == 3 * forward == 69_928_989_696
  assert flops.bert_flops_per_sequence(cfg, 128, 20, training=False) == forward
  assert flops.bert_flops_per_sequence(cfg, 128, 20, with_nsp=False) == 3 * (forward - nsp)
  # The MLM head at all 128 positions: 108 more positions of 2·(H² + HV) each.
  every = flops.bert_flops_per_sequence(cfg, 128, None)
  assert every == 3 * (forward + 108 * 2 * (768 * 768 + 768 * 30522)) == 3 * 28_500_298_752
  ratio = every / flops.bert_flops_per_sequence(cfg, 128, 20)
  assert ratio == pytest.approx(28_500_298_752 / 23_309_663_232)
  assert ratio == pytest.approx(1.22268, abs=1e-5)
  with pytest.raises(ValueError, match="num_masked"):
    flops.bert_flops_per_sequence(cfg, 128, 129)


@pytest.mark.parametrize("kind,dtype,expected", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
    ("NVIDIA H100 80GB HBM3", "tensorfloat32", 494.5e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756e12),
    ("NVIDIA H200", "bfloat16", 989e12),
    ("NVIDIA GH200 480GB", "bfloat16", 989e12),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
    ("NVIDIA A100-SXM4-40GB", "float32", 19.5e12),
    ("NVIDIA A100 80GB PCIe", "tf32", 156e12),
    ("TPU v4", "bfloat16", 275e12),
    ("TPU v5 lite", "bfloat16", 197e12),
    ("TPU v5e", "bfloat16", 197e12),
    ("TPU v5", "bfloat16", 459e12),
    ("TPU v5p", "bfloat16", 459e12),
    ("TPU v6 lite", "bfloat16", 918e12),
    ("TPU v4", "float32", None),  # no vendor fp32 figure: measure
    ("TPU v4 lite", "bfloat16", None),  # an inference chip, not a v4
    ("cpu", "float32", None),
    ("Tesla V100-SXM2-16GB", "float16", None),
])
def test_peak_flops_lookup(kind, dtype, expected):
  assert flops.peak_flops(kind, dtype) == expected


def test_peak_flops_rejects_unknown_dtype():
  with pytest.raises(ValueError, match="unknown dtype 'int8'"):
    flops.peak_flops("TPU v4", "int8")


def test_mfu_arithmetic():
  # 8e14 FLOPs in 2 s = 4e14 FLOP/s, over 8 chips of 1e14 → 0.5.
  assert flops.mfu(8e14, 2.0, 1e14, 8) == 0.5
  # BERT-base, batch 256 at T=128 (20 predictions) in 0.25 s on one H100: 7.16e13 / 9.89e14.
  assert flops.mfu(69_928_989_696 * 256, 0.25, 989e12, 1) == pytest.approx(0.072404, abs=1e-6)
  with pytest.raises(ValueError, match="peak"):
    flops.mfu(1e12, 1.0, None, 1)
  with pytest.raises(ValueError):
    flops.mfu(1e12, 0.0, 1e12, 1)


def test_measure_matmul_peak_on_cpu_is_quick_and_plausible():
  start = time.perf_counter()
  peak = flops.measure_matmul_peak("float32", size=128, seconds=0.05)
  assert time.perf_counter() - start < 20
  assert math.isfinite(peak) and peak > 1e7
  if jax.default_backend() == "cpu":
    assert peak < 1e13  # no CPU this test runs on does 10 TFLOP/s


# --- writers -----------------------------------------------------------------------------------


def _read_events(directory) -> dict:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  found = {}
  for path in sorted(directory.glob("events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        found[(event.step, value.tag)] = value.simple_value
  return found


def test_metric_writer_event_files_and_jsonl(tmp_path):
  workdir = tmp_path / "run"
  with metrics.MetricWriter(workdir) as writer:
    writer.write_scalars(10, {"loss": 1.5, "mlm_accuracy": jnp.float32(0.25)})
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1  # flushed at every write
    writer.write_scalars(20, {"loss": 1.25})
    assert len(list(workdir.glob("events.out.tfevents*"))) == 1
    # Read back (with TF's own reader) before close: on disk as soon as write_scalars returns.
    assert _read_events(workdir) == {(10, "loss"): 1.5, (10, "mlm_accuracy"): 0.25, (20, "loss"): 1.25}
  writer = metrics.MetricWriter(workdir)  # a resumed run: a second event file, JSONL appended
  writer.write_scalars(30, {"eval_mlm_loss": 2.0})
  writer.flush()
  writer.close()
  writer.close()
  assert len(list(workdir.glob("events.out.tfevents*"))) == 2
  assert _read_events(workdir) == {(10, "loss"): 1.5, (10, "mlm_accuracy"): 0.25, (20, "loss"): 1.25,
                                   (30, "eval_mlm_loss"): 2.0}
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows == [{"step": 10, "loss": 1.5, "mlm_accuracy": 0.25}, {"step": 20, "loss": 1.25},
                  {"step": 30, "eval_mlm_loss": 2.0}]


def test_metric_writers_in_the_same_second_keep_separate_event_files(tmp_path, monkeypatch):
  monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # event file names carry the second
  for step in (1, 2):
    with metrics.MetricWriter(tmp_path) as writer:
      writer.write_scalars(step, {"loss": float(step)})
  assert len(list(tmp_path.glob("events.out.tfevents*"))) == 2


def test_metric_writer_is_silent_off_process_zero(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  writer = metrics.MetricWriter(tmp_path / "run")
  writer.write_scalars(1, {"loss": 1.0})
  writer.flush()
  writer.close()
  assert not (tmp_path / "run").exists()


# --- console -----------------------------------------------------------------------------------


def test_progress_line_and_eta_on_a_fake_clock(capsys):
  now = [1000.0]
  bar = metrics.ProgressBar(total=1000, start=0, batch_size=32, clock=lambda: now[0])
  line = bar.update(1, {"loss": 10.4})  # before mark_compiled: no rate yet
  assert line == "step 1/1000 [0%] loss 10.4"
  now[0] += 50.0  # the first step's compile: not counted
  bar.mark_compiled(1)
  now[0] += 10.0  # 119 steps in 10 s → 11.9 steps/s, 380.8 seq/s; 880 steps left → 73.9 s
  line = bar.update(120, {"loss": 6.21, "mlm_accuracy": 0.1324, "nsp_accuracy": 0.875, "grad_norm": 1.0})
  assert line == "step 120/1000 [12%] loss 6.21 mlm_acc 0.132 nsp_acc 0.875 | 380.8 seq/s | ETA 1m14s"
  # A longer run, resumed at step 500: hours in the ETA.
  long_bar = metrics.ProgressBar(total=100_000, start=500, batch_size=8, clock=lambda: now[0])
  long_bar.mark_compiled(501)
  now[0] += 100.0
  assert long_bar.update(1501, {}).endswith("| 80.0 seq/s | ETA 2h44m10s")  # 98,499 steps at 10/s: 9,850 s
  assert capsys.readouterr().out.splitlines() == [
      "step 1/1000 [0%] loss 10.4",
      "step 120/1000 [12%] loss 6.21 mlm_acc 0.132 nsp_acc 0.875 | 380.8 seq/s | ETA 1m14s",
      "step 1501/100000 [1%] | 80.0 seq/s | ETA 2h44m10s"]


def test_progress_note_to_a_stream():
  out = io.StringIO()
  bar = metrics.ProgressBar(total=10, start=0, batch_size=1, stream=out)
  bar.note(10, {"eval_mlm_accuracy": 0.5, "eval_loss": 2.25})
  assert out.getvalue() == "step 10: eval_mlm_accuracy 0.5 eval_loss 2.25\n"
  assert metrics.format_duration(59.6) == "1m00s" and metrics.format_duration(3600) == "1h00m00s"


# --- divergence --------------------------------------------------------------------------------


def test_check_finite():
  metrics.check_finite({"loss": 1.0, "mlm_loss": 0.5, "grad_norm": 3.0, "learning_rate": 1e-4}, 3)
  metrics.check_finite({}, 3)
  with pytest.raises(FloatingPointError, match=r"^loss is nan at step 7: training diverged"):
    metrics.check_finite({"loss": float("nan"), "mlm_accuracy": 0.1}, 7)
  with pytest.raises(FloatingPointError, match=r"^mlm_loss is inf at step 8"):
    metrics.check_finite({"loss": 1.0, "mlm_loss": float("inf")}, 8)
  with pytest.raises(FloatingPointError, match=r"^eval_nsp_loss is -inf, grad_norm is nan at step 9"):
    metrics.check_finite({"eval_nsp_loss": float("-inf"), "grad_norm": jnp.float32(jnp.nan)}, 9)
