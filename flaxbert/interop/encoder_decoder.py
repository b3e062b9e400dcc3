"""Export of a BERT2BERT model (flaxbert.models.encoder_decoder) to transformers' `EncoderDecoderModel` layout.

The directory holds config.json (model_type "encoder-decoder": a BERT encoder config and a BERT
decoder config with is_decoder and add_cross_attention), model.safetensors with HF's tensor names
(flaxbert.interop.names.encoder_decoder_entries: `encoder.*` a BertModel without pooler,
`decoder.bert.*` / `decoder.cls.*` a BertLMHeadModel), generation_config.json with the special
ids the model was trained with ([CLS] starts decoding, [SEP] ends it, [PAD] pads), and the
tokenizer (vocab.txt with a tokenizer_config.json that transformers' BertTokenizer and flaxbert
both read; or spm.model). A BERTShare model
sets tie_encoder_decoder and writes the shared tensors under both names. The encoder's pooler,
which EncoderDecoderModel creates but never uses, is written as zeros.

`transformers.EncoderDecoderModel.from_pretrained(DIR)` loads it with no missing or unexpected
keys and gives flaxbert's logits (tests/test_seq2seq_finetune.py). `flaxbert convert WORKDIR DST
--to hf` restores a seq2seq workdir and calls `export_hf` (flaxbert.finetune.job.export_hf).
"""
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from flaxbert.atomic import atomic_directory
from flaxbert.interop.names import encoder_decoder_entries, get_path, to_external
from flaxbert.interop.pretrained import EXPORT_KIND, EXPORT_MARKERS, is_export


def export_hf(model, params: dict, tokenizer, max_target_length: int, dst: str | os.PathLike,
              overwrite: bool = False, inputs=()) -> Path:
  """Writes a BertEncoderDecoder's `params` (with its tokenizer; generation up to
  `max_target_length` tokens) to `dst`, atomically; `inputs` (the workdir read) are never replaced."""
  enc, dec, share = model.encoder_config, model.decoder_config, model.share
  tensors = {e.hf: to_external(np.asarray(get_path(params, e.path)), e.kind, "hf")
             for e in encoder_decoder_entries(enc, dec, share)}
  # EncoderDecoderModel builds its BertModel encoder with a pooler, which it never uses: zeros keep
  # the load free of missing keys (flaxbert's encoder has none; BERT2BERT drops it)
  h = enc.hidden_size
  tensors.update({"encoder.pooler.dense.weight": np.zeros((h, h), np.float32),
                  "encoder.pooler.dense.bias": np.zeros((h,), np.float32)})
  t = tokenizer
  ids = {"decoder_start_token_id": t.cls_id, "eos_token_id": t.sep_id, "pad_token_id": t.pad_id}
  config = {"model_type": "encoder-decoder", "architectures": ["EncoderDecoderModel"], "is_encoder_decoder": True,
            "tie_encoder_decoder": share, "encoder": enc.to_hf_dict(),
            "decoder": dict(dec.to_hf_dict(), is_decoder=True, add_cross_attention=True,
                            architectures=["BertLMHeadModel"]),
            **ids}
  config["encoder"]["architectures"] = ["BertModel"]
  generation = dict(ids, max_length=max_target_length + 1)  # HF counts the start token
  with atomic_directory(dst, overwrite, list(inputs), is_export, EXPORT_KIND, complete=EXPORT_MARKERS) as tmp:
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.fspath(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    t.save(tmp)  # vocab.txt or spm.model, and flaxbert's tokenizer_config.json …
    if t.kind == "wordpiece":  # … which for WordPiece becomes one transformers' BertTokenizer reads too
      (tmp / "tokenizer_config.json").write_text(json.dumps(
          {"tokenizer_class": "BertTokenizer", "do_lower_case": t.lower_case}, indent=2) + "\n")
  return Path(dst)
