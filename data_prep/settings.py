"""The settings of a dataset build (`flaxbert prepare`, `tfds build bert_pretraining`), with their
defaults: google-research/bert's create_pretraining_data.py flags, plus where the text comes from
and how the work is split. They are recorded in the dataset (metadata.json "settings"), and the
input pipeline reads the format-defining ones back (masking, max_seq_length, random_next_sentence).

`prepare_settings("original")` is the original's static masking; `prepare_settings("dynamic")`
stores unmasked pairs that the input pipeline masks afresh every epoch (RoBERTa / MosaicBERT).
configs/prepare.py builds the command line's variants on these.
"""
import ml_collections
from ml_collections import config_dict

VARIANTS = ("original", "dynamic")


def prepare_settings(variant: str = "original") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # --- corpus --------------------------------------------------------------------------------
  c.input = ()  # local text files or folders (searched recursively)
  c.input_format = "sentence_per_line"  # or "document_per_file" (sentences split by rule)
  c.tfds_name = config_dict.placeholder(str)  # a locally prepared TFDS text dataset, e.g. "wikipedia/20230601.en"
  c.tfds_split = "train"  # split of tfds_name to read
  c.tfds_text_feature = "text"  # its text feature; each example is one document
  c.tfds_data_dir = config_dict.placeholder(str)  # TFDS data_dir holding tfds_name (None: TFDS default)
  # --- vocabulary ------------------------------------------------------------------------------
  c.vocab = config_dict.placeholder(str)  # vocab.txt or sentencepiece .model; None: train one
  c.lower_case = True  # lower-case and strip accents (uncased models)
  c.train_vocab_kind = "wordpiece"  # when vocab is None: "wordpiece" | "sentencepiece_unigram" | "sentencepiece_bpe"
  c.train_vocab_size = 30522  # when vocab is None: size of the trained vocabulary
  # --- examples (create_pretraining_data.py) --------------------------------------------------
  c.max_seq_length = 128  # tokens per example, [CLS]/[SEP] included
  c.max_predictions_per_seq = 20  # cap on masked positions per example
  c.masked_lm_prob = 0.15  # fraction of tokens to mask
  c.short_seq_prob = 0.1  # probability of a shorter random target length
  c.dupe_factor = 10  # passes over the corpus, each with different masks and pairs
  c.whole_word_mask = False  # mask all wordpieces of a word together
  c.random_next_sentence = True  # NSP pairs (50% random B); False: single segments, label 0
  c.masking = "static"  # "static": masks stored; "dynamic": masked per epoch by the input pipeline
  c.seed = 12345  # all randomness derives from it
  # --- output --------------------------------------------------------------------------------
  c.output_dir = config_dict.placeholder(str)  # the dataset folder (tfds.builder_from_directory opens it)
  c.validation_fraction = 0.01  # fraction of documents held out for the validation split (at least 1)
  c.chunk_chars = 4_000_000  # characters of text per work unit (one train shard per unit and dupe pass); bounds memory
  c.num_workers = 0  # worker processes for instance creation; 0: one per CPU core
  c.overwrite = False  # replace an existing output_dir (only once the new one is complete)
  # Apache Beam (the `beam` extra) for stage 2; both empty: worker processes on this machine (num_workers).
  # Beam workers read the chunk files that stage 1 writes beside output_dir and write the shards there:
  # a distributed runner needs output_dir on a filesystem its workers share (docs/data.md).
  c.beam_runner = ""  # e.g. "DirectRunner", "FlinkRunner", "DataflowRunner"; overrides a --runner in beam_options
  # pipeline flags, e.g. "--direct_num_workers=2 --direct_running_mode=multi_processing"; a --runner
  # here is used when beam_runner is empty, and without either the runner is DirectRunner
  c.beam_options = ""

  if variant == "dynamic":
    c.masking = "dynamic"
    c.dupe_factor = 1  # masks are drawn afresh each epoch, so one pass over the corpus suffices
  elif variant != "original":
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
  return c
