"""flaxbert trains as transformers' PyTorch BertForPreTraining does, step for step (tiny BERT, 10 steps).

bench/training_parity.py runs both sides (bench/compare_training.py is the same at BERT-mini on a real
corpus, 200 steps): one initial model, the same statically masked NSP batches, dropout off, float32;
AdamW, the original BERT Adam (bert_adam) and gradient accumulation. Every step's total, MLM and NSP
loss and the final weights agree within 1e-4 relative.
"""
import sys
from pathlib import Path

import pytest

from corpus_fixtures import prepare_tiny, tiny_pretrain_config

pytest.importorskip("torch", reason="training parity needs torch==2.13.0 (pip install -e .[test])")
pytest.importorskip("transformers", reason="training parity needs transformers (pip install -e .[test])")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is beside the package, not installed
from bench import training_parity  # noqa: E402  pylint: disable=wrong-import-position

STEPS, ACCUM, TOLERANCE = 10, 4, 1e-4


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  dataset = prepare_tiny(tmp_path_factory.mktemp("parity"))
  config = tiny_pretrain_config(dataset, **{"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0,
                                            "optim.warmup_steps": 3, "global_batch_size": 16})
  return training_parity.run_all(config, STEPS, ACCUM, TOLERANCE, log=lambda _: None)


@pytest.mark.parametrize("name", ["adamw", "bert_adam", "accum", "accum_vs_torch_batch", "accum_vs_flaxbert_batch"])
def test_losses_and_final_weights_agree(report, name):
  result = report["comparisons"][name]
  maxima = {k: result[k]["max_relative_difference"] for k in training_parity.PARTS}
  maxima["final_params"] = result["final_params_max_relative_difference"]
  assert max(maxima.values()) <= TOLERANCE, (maxima, result["final_params_worst_tensor"])
  assert result["within_tolerance"]


def test_the_comparison_is_not_vacuous(report):
  """The weights moved, the optimizers differ, and micro-batches hold different numbers of masked
  positions (so a mean of micro-batch means would not be the batch's loss)."""
  adamw, bert_adam = report["comparisons"]["adamw"], report["comparisons"]["bert_adam"]
  assert len(adamw["loss"]["flaxbert_adamw"]) == STEPS
  assert adamw["loss"]["flaxbert_adamw"][-1] < adamw["loss"]["flaxbert_adamw"][0]
  assert abs(bert_adam["loss"]["flaxbert_bert_adam"][-1] - adamw["loss"]["flaxbert_adamw"][-1]) > 1e-3
  assert any(len(set(counts)) > 1 for counts in report["masked_per_micro_batch"])


def test_single_segments_train_on_what_bert_for_masked_lm_computes():
  """On single segments (no NSP) the torch side's loss is BertForPreTraining's masked-LM part, which
  must be what a transformers user pretraining MLM-only gets from BertForMaskedLM on the same weights."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  batch = {"input_ids": rng.integers(5, 60, (3, 12)), "input_mask": np.ones((3, 12), np.int32),
           "segment_ids": np.zeros((3, 12), np.int32), "next_sentence_labels": np.zeros(3, np.int32),
           "masked_lm_positions": np.stack([rng.permutation(12)[:4] for _ in range(3)]),
           "masked_lm_ids": rng.integers(5, 60, (3, 4)),
           "masked_lm_weights": np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)}
  config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=16)
  torch.manual_seed(0)
  pretraining = transformers.BertForPreTraining(config).eval()
  masked_lm = transformers.BertForMaskedLM(config).eval()
  missing, _ = masked_lm.load_state_dict(pretraining.state_dict(), strict=False)
  assert not missing
  inputs = training_parity.torch_inputs(batch, nsp=False)
  assert "next_sentence_label" not in inputs and int((inputs["labels"] != -100).sum()) == 9
  with torch.no_grad():
    out = pretraining(**inputs)
    assert out.loss is None  # nothing but the masked-LM part to train on
    ours, theirs = training_parity.mlm_loss(out, inputs["labels"]), masked_lm(**inputs).loss
  assert abs(float(ours) - float(theirs)) <= 1e-6 * float(theirs), (float(ours), float(theirs))
