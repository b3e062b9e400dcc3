"""The packaged configs: every preset and task loads, the paper's recipes say what the paper did,
sections are shared, overrides parse by the field's type, old spellings name the new ones, and
packaged names resolve from any directory."""
import pytest

from configs import common, finetune, prepare, pretrain
from flaxbert import cli
from flaxbert.config_flags import apply_overrides, load_config
from flaxbert.errors import InputError
from flaxbert.finetune.tasks.registry import TASKS
from flaxbert.models.config import SIZES
from flaxbert.training import optim, sharding

PRESETS = pretrain.SIZES + ("paper", "paper_phase2", "mlperf_phase2", "demo")


@pytest.mark.parametrize("arg", PRESETS)
def test_every_preset_loads_and_its_schedule_ends_no_earlier_than_the_run(arg):
  c = pretrain.get_config(arg)
  assert c.recipe == arg and c.model.size in SIZES
  opt = optim.resolve(c.optim, c.num_train_steps)
  assert 0 < c.num_train_steps <= opt.num_train_steps
  assert 0 <= opt.warmup_steps < opt.num_train_steps


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
  assert optim.resolve(one.optim, one.num_train_steps).num_train_steps == 1_000_000


def test_the_schedule_follows_the_run_length_unless_a_recipe_fixes_it():
  c = pretrain.get_config("tiny")
  c.num_train_steps = 123
  assert c.optim.num_train_steps is None and optim.resolve(c.optim, c.num_train_steps).num_train_steps == 123


def test_warmup_is_steps_or_a_share_of_the_schedule_never_both():
  f = finetune.get_config("glue_sst2").optim
  assert (f.warmup_steps, f.warmup_proportion) == (None, 0.1) and optim.resolve(f, 200).warmup_steps == 20
  f.warmup_steps = 5
  with pytest.raises(InputError, match="set exactly one"):
    optim.resolve(f, 200)


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match="unknown argument 'bogus'"):
    pretrain.get_config("bogus")


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_loads_with_the_shared_sections_and_only_its_familys_fields(task):
  for arg in (task, f"{task},tiny"):
    c = finetune.get_config(arg)
    assert c.task == task
    for name, section in (("optim", common.optim(learning_rate=1.0)), ("mesh", common.mesh()),
                          ("checkpoint", common.checkpoint(every_steps=1, keep=1))):
      assert set(c[name].keys()) == set(section.keys()), name
  c = finetune.get_config(task)
  assert ("doc_stride" in c) == task.startswith("squad") and ("beam_size" in c) == (TASKS[task] == "seq2seq")
  assert ("max_seq_length" in c) == (TASKS[task] != "seq2seq")
  assert ("remat_policy" in c.model) == (TASKS[task] != "seq2seq")  # encoder runs: models built on BertModel


def test_one_list_of_tasks_and_one_table_of_sizes():
  from flaxbert.finetune.tasks.glue_tsv import GLUE_FORMATS  # pylint: disable=import-outside-toplevel
  assert [t for t in TASKS if t.startswith("glue_")] == [f"glue_{t}" for t in GLUE_FORMATS]
  assert pretrain.SIZES == tuple(SIZES)
  with pytest.raises(ValueError, match="unknown task 'glue_foo'"):
    finetune.get_config("glue_foo")


def test_command_line_overrides_parse_by_the_fields_type():
  c = apply_overrides(pretrain.get_config("tiny"), ["mesh.sharding_rules=fsdp", "optim.warmup_steps=7"])
  assert c.mesh.sharding_rules == sharding.FSDP and c.optim.warmup_steps == 7
  c = apply_overrides(c, ['mesh.sharding_rules=(("batch", ["data", "fsdp"]), ("embed", "fsdp"), ("vocab", None))'])
  assert c.mesh.sharding_rules == sharding.FSDP
  assert sharding.rules_from_config(c.mesh.sharding_rules) == sharding.FSDP
  with pytest.raises(InputError, match=r"sharding_rules=FSPD: expected a preset \(data_parallel, fsdp"):
    apply_overrides(c, ["mesh.sharding_rules=FSPD"])
  with pytest.raises(InputError, match="not a Python literal"):
    apply_overrides(c, ["mesh.sharding_rules=((batch, data),)"])
  # A placeholder declared bool (value None) takes true/false, and none clears it again.
  assert apply_overrides(finetune.get_config("glue_sst2,tiny"), ["lower_case=false"]).lower_case is False
  assert apply_overrides(finetune.get_config("glue_sst2,tiny"), ["lower_case=none"]).lower_case is None
  f = apply_overrides(finetune.get_config("glue_sst2,tiny"), ["optim.warmup_steps=3", "optim.warmup_proportion=none"])
  assert (f.optim.warmup_steps, f.optim.warmup_proportion) == (3, None)
  with pytest.raises(InputError, match=r"lower_case=maybe: expected a bool"):
    apply_overrides(f, ["lower_case=maybe"])


def test_an_old_spelling_names_the_new_one(capsys):
  config, renamed = load_config("finetune:glue_sst2")
  with pytest.raises(InputError, match=r"--config.learning_rate=1e-5: learning_rate is now optim.learning_rate"):
    apply_overrides(config, ["learning_rate=1e-5"], renamed)
  with pytest.raises(InputError, match=r"unknown key 'doc_stride'"):  # another family's field: not renamed
    apply_overrides(config, ["doc_stride=3"], renamed)
  assert cli.main(["pretrain", "--config", "pretrain:tiny", "--workdir", "unused",
                   "--config.checkpoint_every_steps=5"]) == 2
  err = capsys.readouterr().err
  assert "checkpoint_every_steps is now checkpoint.every_steps (--config.checkpoint.every_steps=5)" in err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_packaged_configs_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # outside the checkout: no configs/ folder here
  for spec, check in (("pretrain:base", lambda c: c.model.size == "base"),
                      ("finetune:glue_mrpc", lambda c: c.task == "glue_mrpc"),
                      ("prepare:dynamic", lambda c: c.masking == "dynamic"), ("prepare", lambda c: c.dupe_factor == 10)):
    assert check(load_config(spec)[0]), spec
  with pytest.raises(InputError, match=r"no such file 'configs/pretrain.py'; the packaged one is --config pretrain:base"):
    load_config("configs/pretrain.py:base")
  with pytest.raises(InputError, match=r"no packaged config 'pretrian'; expected one of \['finetune', 'prepare', 'pretrain'\]"):
    load_config("pretrian:base")
  own = tmp_path / "mine.py"
  own.write_text("from configs import finetune\n\ndef get_config(arg):\n  c = finetune.get_config(arg)\n"
                 "  c.seed = 7\n  return c\n")
  assert load_config(f"{own}:ner")[0].seed == 7  # a file of one's own, built on the packaged ones


def test_unknown_config_argument_is_a_clean_command_line_error(capsys):
  assert cli.main(["pretrain", "--config", "pretrain:huge", "--workdir", "unused"]) == 2
  err = capsys.readouterr().err
  assert "flaxbert pretrain: error: --config pretrain:huge: configs/pretrain.py: unknown argument 'huge'" in err
  assert "Traceback" not in err


def test_prepare_variants_build_on_the_dataset_settings():
  from data_prep.settings import prepare_settings  # pylint: disable=import-outside-toplevel
  assert prepare.get_config("original").to_dict() == prepare_settings("original").to_dict()
  assert prepare.get_config("dynamic").masking == "dynamic" and prepare.get_config("tiny").max_seq_length == 32
