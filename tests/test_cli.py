"""`flaxbert convert`: the command end to end, and clear errors for bad sources."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import flaxbert
from flaxbert.cli import main


@pytest.fixture
def hf_dir(tmp_path, tiny_model, tiny_params):
  flaxbert.save_pretrained(tmp_path / "hf", tiny_model, tiny_params, format="hf")
  return tmp_path / "hf"


def run_convert(capsys, *args):
  code = main(["convert", *map(str, args)])
  return code, capsys.readouterr()


def test_console_command_converts(tmp_path, hf_dir):
  exe = os.path.join(os.path.dirname(sys.executable), "flaxbert")
  cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "flaxbert.cli"]
  done = subprocess.run([*cmd, "convert", str(hf_dir), str(tmp_path / "fb"), "--to", "flaxbert"],
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  assert "converted hf → flaxbert" in done.stdout and "with pretraining heads" in done.stdout
  assert (tmp_path / "fb" / "flaxbert_config.json").is_file()


def test_missing_source(tmp_path, capsys):
  code, out = run_convert(capsys, tmp_path / "nope", tmp_path / "dst", "--to", "hf")
  assert code == 2 and f"{tmp_path / 'nope'}: no such file or directory" in out.err
  assert not (tmp_path / "dst").exists()


def test_folder_that_is_no_checkpoint(tmp_path, capsys):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "notes.txt").write_text("hello")
  code, out = run_convert(capsys, tmp_path / "src", tmp_path / "dst", "--to", "hf")
  assert code == 2 and "not a BERT checkpoint; expected a flaxbert directory" in out.err


def test_non_bert_config(hf_dir, tmp_path, capsys):
  config = json.loads((hf_dir / "config.json").read_text())
  (hf_dir / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
  code, out = run_convert(capsys, hf_dir, tmp_path / "dst", "--to", "flaxbert")
  assert code == 2 and "config.json: model_type is 'gpt2'; only 'bert' models can be imported" in out.err


def test_wrong_shape_names_the_tensor(hf_dir, tmp_path, capsys):
  tensors = load_file(hf_dir / "model.safetensors")
  tensors["bert.encoder.layer.1.intermediate.dense.weight"] = np.zeros((500, 128), np.float32)
  save_file(tensors, hf_dir / "model.safetensors")
  code, out = run_convert(capsys, hf_dir, tmp_path / "dst", "--to", "flaxbert")
  assert code == 2
  assert "tensor 'bert.encoder.layer.1.intermediate.dense.weight' has shape (500, 128), expected (512, 128)" in out.err
  assert not (tmp_path / "dst").exists()


def test_missing_tensor_is_named(hf_dir, tmp_path, capsys):
  tensors = load_file(hf_dir / "model.safetensors")
  del tensors["bert.encoder.layer.0.attention.self.key.bias"]
  save_file(tensors, hf_dir / "model.safetensors")
  code, out = run_convert(capsys, hf_dir, tmp_path / "dst", "--to", "hf")
  assert code == 2 and "missing tensor 'bert.encoder.layer.0.attention.self.key.bias'" in out.err


def test_config_that_does_not_match_the_weights(hf_dir, tmp_path, capsys):
  config = json.loads((hf_dir / "config.json").read_text())
  (hf_dir / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
  code, out = run_convert(capsys, hf_dir, tmp_path / "dst", "--to", "hf")
  assert code == 2 and "unexpected tensor 'bert.encoder.layer.1." in out.err and "1 layers" in out.err


def test_invalid_config_value(hf_dir, tmp_path, capsys):
  config = json.loads((hf_dir / "config.json").read_text())
  (hf_dir / "config.json").write_text(json.dumps({**config, "num_attention_heads": 3}))
  code, out = run_convert(capsys, hf_dir, tmp_path / "dst", "--to", "hf")
  assert code == 2 and "config.json: BertConfig.hidden_size (128) must be divisible by num_attention_heads (3)" in out.err


def test_missing_weights_and_corrupt_weights(hf_dir, tmp_path, capsys):
  data = (hf_dir / "model.safetensors").read_bytes()
  (hf_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
  code, out = run_convert(capsys, hf_dir, tmp_path / "dst", "--to", "hf")
  assert code == 2 and "model.safetensors: not a readable safetensors file" in out.err
  (hf_dir / "model.safetensors").unlink()
  code, out = run_convert(capsys, hf_dir, tmp_path / "dst", "--to", "hf")
  assert code == 2 and "has config.json but no weights" in out.err


def test_tf1_without_config_and_corrupt_index(tmp_path, tiny_config, tiny_params, capsys):
  model = flaxbert.build_model(tiny_config.replace(hidden_act="gelu_tanh"))
  flaxbert.save_pretrained(tmp_path / "tf", model, tiny_params, format="tf1")
  (tmp_path / "tf" / "bert_config.json").rename(tmp_path / "saved_config.json")
  code, out = run_convert(capsys, tmp_path / "tf", tmp_path / "dst", "--to", "hf")
  assert code == 2 and "bert_config.json: missing; a TF1 BERT checkpoint needs its bert_config.json" in out.err
  (tmp_path / "saved_config.json").rename(tmp_path / "tf" / "bert_config.json")
  (tmp_path / "tf" / "bert_model.ckpt.index").write_bytes(b"garbage")
  code, out = run_convert(capsys, tmp_path / "tf" / "bert_model.ckpt", tmp_path / "dst", "--to", "hf")
  assert code == 2 and "not a readable TF checkpoint" in out.err


def test_planted_pickle_payload_does_not_run(hf_dir, tmp_path, capsys):
  import pickle  # pylint: disable=import-outside-toplevel
  import zipfile  # pylint: disable=import-outside-toplevel
  marker = tmp_path / "pwned"

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))
  (hf_dir / "model.safetensors").unlink()
  with zipfile.ZipFile(hf_dir / "pytorch_model.bin", "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"bert.embeddings.word_embeddings.weight": Payload()}))
    z.writestr("archive/version", "3\n")
  code, out = run_convert(capsys, hf_dir, tmp_path / "dst", "--to", "flaxbert")
  assert code == 2 and "refusing to unpickle" in out.err and "system" in out.err
  assert not marker.exists()


def test_unknown_target_format_is_an_argument_error(hf_dir, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    main(["convert", str(hf_dir), str(tmp_path / "x"), "--to", "onnx"])
  assert e.value.code == 2 and "invalid choice: 'onnx'" in capsys.readouterr().err
