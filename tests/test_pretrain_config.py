"""configs/pretrain.py: every preset loads, and the paper's recipes say what the paper did."""
import pytest

from configs import pretrain

PRESETS = pretrain.SIZES + ("paper", "paper_phase2", "mlperf_phase2", "demo")


@pytest.mark.parametrize("arg", PRESETS)
def test_every_preset_loads_and_its_schedule_ends_no_earlier_than_the_run(arg):
  c = pretrain.get_config(arg)
  assert c.recipe == arg and c.model.size in pretrain.SIZES
  assert 0 < c.num_train_steps <= c.optim.num_train_steps
  assert 0 <= c.optim.warmup_steps < c.optim.num_train_steps


def test_paper_phase_one_stops_at_900k_of_a_1m_step_schedule_and_phase_two_continues_it():
  one, two = pretrain.get_config("paper"), pretrain.get_config("paper_phase2")
  assert (one.num_train_steps, one.optim.num_train_steps) == (900_000, 1_000_000)
  assert (two.num_train_steps, two.optim.num_train_steps) == (1_000_000, 1_000_000)
  assert two.init_mode == "full_state"  # step, optimizer and schedule continue from phase 1
  for c in (one, two):
    assert (c.model.size, c.global_batch_size, c.optim.learning_rate, c.optim.warmup_steps) == ("base", 256, 1e-4, 10_000)
    assert (c.optim.weight_decay, c.optim.adam_b1, c.optim.adam_b2, c.optim.adam_eps) == (0.01, 0.9, 0.999, 1e-6)
    assert c.model.hidden_dropout_prob == c.model.attention_probs_dropout_prob == 0.1
    assert (c.optim.optimizer, c.model.hidden_act) == ("bert_adam", "gelu_tanh")  # as the released code
  one.num_train_steps = 10  # an override of the run's length leaves the paper's schedule alone
  assert one.optim.num_train_steps == 1_000_000


def test_the_schedule_follows_the_run_length_unless_a_recipe_fixes_it():
  c = pretrain.get_config("tiny")
  c.num_train_steps = 123
  assert c.optim.num_train_steps == 123


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match="unknown argument 'bogus'"):
    pretrain.get_config("bogus")


def test_command_line_overrides_parse_by_the_fields_type():
  from configs import finetune  # pylint: disable=import-outside-toplevel
  from flaxbert import sharding  # pylint: disable=import-outside-toplevel
  from flaxbert.config_flags import apply_overrides  # pylint: disable=import-outside-toplevel
  from flaxbert.errors import InputError  # pylint: disable=import-outside-toplevel
  c = apply_overrides(pretrain.get_config("tiny"), ["sharding_rules=fsdp", "optim.warmup_steps=7"])
  assert c.sharding_rules == sharding.FSDP and c.optim.warmup_steps == 7
  c = apply_overrides(c, ['sharding_rules=(("batch", ["data", "fsdp"]), ("embed", "fsdp"), ("vocab", None))'])
  assert c.sharding_rules == sharding.FSDP
  assert sharding.rules_from_config(c.sharding_rules) == sharding.FSDP
  with pytest.raises(InputError, match=r"sharding_rules=FSPD: expected a preset \(data_parallel, fsdp"):
    apply_overrides(c, ["sharding_rules=FSPD"])
  with pytest.raises(InputError, match="not a Python literal"):
    apply_overrides(c, ["sharding_rules=((batch, data),)"])
  # A placeholder declared bool (value None) takes true/false, and none clears it again.
  assert apply_overrides(finetune.get_config("glue_sst2,tiny"), ["lower_case=false"]).lower_case is False
  assert apply_overrides(finetune.get_config("glue_sst2,tiny"), ["lower_case=none"]).lower_case is None
  f = finetune.get_config("glue_sst2,tiny")
  with pytest.raises(InputError, match=r"lower_case=maybe: expected a bool"):
    apply_overrides(f, ["lower_case=maybe"])


def test_unknown_config_argument_is_a_clean_command_line_error(capsys):
  from flaxbert import cli  # pylint: disable=import-outside-toplevel
  assert cli.main(["pretrain", "--config", "configs/pretrain.py:huge", "--workdir", "unused"]) == 2
  err = capsys.readouterr().err
  assert "flaxbert pretrain: error: --config configs/pretrain.py:huge: configs/pretrain.py: unknown argument 'huge'" in err
  assert "Traceback" not in err
