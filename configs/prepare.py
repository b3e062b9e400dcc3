"""Settings for `flaxbert prepare`: corpus → vocabulary → masked-LM / sentence-pair TFDS dataset.

  flaxbert prepare --config prepare[:ARG] [--config.key=value …]
ARG: "original" (default: google-research/bert's create_pretraining_data.py defaults),
     "dynamic" (unmasked pairs; masking in the input pipeline, RoBERTa/MosaicBERT style),
     "tiny" (small settings for tests).
Every field, with its default and meaning: data_prep/settings.py (the dataset builder's settings,
which `tfds build bert_pretraining` uses too). The common settings also have plain flags
(--input, --vocab, --output_dir, --max_seq_length, …).
"""
import ml_collections

from data_prep.settings import prepare_settings


def get_config(arg: str = "original") -> ml_collections.ConfigDict:
  if arg not in ("", "original", "dynamic", "tiny"):
    raise ValueError(f"configs/prepare.py: unknown variant {arg!r}; expected original, dynamic or tiny")
  c = prepare_settings("dynamic" if arg == "dynamic" else "original")
  if arg == "tiny":
    c.max_seq_length = 32  # tokens per example
    c.max_predictions_per_seq = 5
    c.dupe_factor = 2
    c.chunk_chars = 8_000  # several work units even for a small test corpus
    c.num_workers = 1
    c.train_vocab_size = 200
  return c
