"""Settings for `flaxbert finetune|evaluate|predict --config configs/finetune.py:TASK --workdir W`.

TASK: glue_cola | glue_sst2 | glue_mrpc | glue_stsb | glue_qqp | glue_mnli | glue_qnli | glue_rte |
      glue_wnli | ner | squad_v1 | squad_v2 | similarity | summarization |
      translation | summarization_abstractive (BERT2BERT encoder-decoders: flaxbert/seq2seq_finetune.py)
      (append `,tiny` — e.g. `glue_sst2,tiny` — for the test-sized variant: short sequences, small
      batches, one epoch).

Defaults are the BERT paper's fine-tuning recipe (Devlin et al. 2018, section 4 and appendix A.3):
Adam with lr in {5e-5, 3e-5, 2e-5} (`sweep`), batch 16 or 32, 2–4 epochs, 10% linear warmup then
linear decay, weight decay 0.01, dropout 0.1; SQuAD v1.1: lr 5e-5, batch 32, 2 epochs (3 in the
paper's v1.1 run), max_seq_length 384, doc_stride 128, max_query_length 64; SQuAD v2.0: batch 48,
2 epochs. Translation / abstractive summarization follow Rothe et al. 2020 (BERT2BERT: encoder and
decoder warm-started from BERT, cross-attention new; beam 4, length penalty 0.6, label smoothing
0.1), with a learning rate sized for short CPU budgets. Summarization follows BertSumExt (max_seq_length 512, a [CLS] per sentence, 2 inter-sentence
Transformer layers, 3 sentences, trigram blocking) with mean-pooled sentence vectors (pooling=cls:
BertSum's [CLS] states).
"""
import ml_collections
from ml_collections import config_dict

GLUE = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
# (text_a, text_b) columns of the GLUE tasks' CSV/JSONL exports that differ from sentence1/sentence2.
GLUE_TEXT_COLUMNS = {"cola": ("sentence", ""), "sst2": ("sentence", ""), "qqp": ("question1", "question2"),
                     "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence")}
SEQ2SEQ_TASKS = ("translation", "summarization_abstractive")
TASKS = tuple(f"glue_{t}" for t in GLUE) + ("ner", "squad_v1", "squad_v2", "similarity", "summarization") + SEQ2SEQ_TASKS


def get_config(arg: str = "glue_sst2") -> ml_collections.ConfigDict:
  task, _, variant = arg.partition(",")
  if task not in TASKS:
    raise ValueError(f"configs/finetune.py: unknown task {task!r}; expected one of {', '.join(TASKS)}")
  if variant not in ("", "tiny"):
    raise ValueError(f"configs/finetune.py: unknown variant {variant!r}; expected 'tiny' or nothing")
  c = ml_collections.ConfigDict()
  c.task = task  # which task family reads, featurizes, scores (flaxbert/tasks/registry.py)
  # --- model and data ----------------------------------------------------------------------------
  c.init = config_dict.placeholder(str)  # pretrained model: flaxbert dir/workdir, HF dir or TF1 checkpoint
  c.train_path = config_dict.placeholder(str)  # training file (GLUE TSV, CSV/JSONL, CoNLL, SQuAD JSON, JSONL)
  c.eval_path = config_dict.placeholder(str)  # dev file(s), comma-separated; scores of the 2nd… are prefixed
  c.train_split = config_dict.placeholder(str)  # JSONL with a "split" field (summarization): which rows train
  c.eval_split = config_dict.placeholder(str)  # … and which rows evaluate
  c.max_seq_length = 128  # wordpieces per sequence, [CLS]/[SEP] included; longer inputs truncated/windowed
  c.lower_case = config_dict.placeholder(bool)  # tokenizer casing; None: what the checkpoint's vocab says
  c.text_a_column = "sentence1"  # CSV/JSONL files: the first text's column (GLUE: GLUE_TEXT_COLUMNS; TSVs fixed)
  c.text_b_column = "sentence2"  # CSV/JSONL: the second text's column ("" for single-sentence tasks)
  c.label_column = "label"  # CSV/JSONL: the label (or score) column
  # GLUE TSVs: skip (and count, in the log) rows with the wrong number of columns instead of stopping
  # at the first, as the reference processors do with QQP's few broken rows.
  c.skip_malformed_rows = False
  # --- training -----------------------------------------------------------------------------------
  c.learning_rate = 2e-5  # peak learning rate (paper grid: 5e-5, 3e-5, 2e-5)
  c.batch_size = 32  # global training batch (paper: 16 or 32); packed tasks: examples a batch on average
  c.max_examples_per_row = 16  # classification, NER, SQuAD: sequence packing puts up to this many examples in one
  #   max_seq_length row, each attending only to itself (flaxbert.packing); 1: one example a row
  c.eval_batch_size = 64  # evaluation/prediction batch; the last one is padded and masked
  c.num_epochs = 3.0  # passes over the training set (paper: 2–4); fractions allowed
  c.warmup_proportion = 0.1  # share of the steps with linear warmup
  c.optimizer = "adamw"  # adamw | bert_adam (the original's, no bias correction) | lamb
  c.weight_decay = 0.01  # decoupled, not on LayerNorm/bias
  c.adam_b1 = 0.9  # first-moment decay
  c.adam_b2 = 0.999  # second-moment decay
  c.adam_eps = 1e-6  # as the original BERT (HF Trainer uses 1e-8)
  c.max_grad_norm = 1.0  # global-norm clipping; 0 disables
  c.dropout = 0.1  # hidden and attention dropout of the encoder, and dropout before the head
  c.dtype = "float32"  # compute dtype: float32 | bfloat16 (params and optimizer stay float32)
  c.seed = 0  # head init, data order and dropout derive from it
  c.rng_impl = "threefry2x32"  # dropout's PRNG: threefry2x32 (mesh-invariant) | rbg | unsafe_rbg (cheaper)
  # --- task-specific -------------------------------------------------------------------------------
  c.doc_stride = 128  # squad: stride between document windows
  c.max_query_length = 64  # squad: question wordpieces kept
  c.n_best_size = 20  # squad: start/end candidates per window
  c.max_answer_length = 30  # squad: longest answer span in wordpieces
  c.null_score_diff_threshold = 0.0  # squad_v2: predict no answer when null − best span score exceeds it
  c.pooling = "mean"  # similarity/embed: mean over the mask | cls; summarization: sentence vectors likewise
  c.score_scale = 5.0  # similarity: gold scores are divided by this to compare with cosine (STS: 0–5)
  c.summary_sentences = 3  # summarization: sentences selected per document (Lead-3's budget)
  c.oracle_sentences = 3  # summarization: greedy ROUGE oracle size for the training labels
  c.inter_sentence_layers = 2  # summarization: Transformer layers over the sentence vectors (BertSumExt: 2; 0: linear)
  c.max_sentences = 64  # summarization: sentence slots per document (ones that fit in max_seq_length)
  c.warm_start = "bert2bert"  # seq2seq: bert2bert | bert2rnd | bertshare | random (init's architecture and vocab, fresh weights)
  c.fresh_lr_scale = 5.0  # seq2seq warm starts: learning-rate multiplier of the weights the checkpoint lacks
  #   (cross-attention, a missing MLM head; bert2rnd: the decoder), so they catch up with the pretrained ones
  #   (1.0: one rate for all, as Rothe et al.; at short budgets the decoder then ignores its source)
  c.model_size = "small"  # seq2seq, warm_start=random without init: encoder and decoder size (tiny … large)
  c.vocab = config_dict.placeholder(str)  # seq2seq: vocab.txt / spm.model for both sides; None: init's, or
  #   without init a joint sentencepiece trained on both sides of the training pairs
  c.vocab_size = 8000  # seq2seq: pieces of that joint sentencepiece
  c.source_field = "source"  # seq2seq .jsonl files: the source text (or list of sentences, joined)
  c.target_fields = "target"  # seq2seq .jsonl: reference field(s), comma-separated; the first one trains
  c.eval_target_fields = config_dict.placeholder(str)  # … of the eval files when they differ (None: target_fields)
  c.max_source_length = 64  # seq2seq: source wordpieces with [CLS]/[SEP]; longer training pairs are skipped
  #   (counted), longer eval sources cut
  c.cut_long_sources = task == "summarization_abstractive"  # seq2seq: cut longer training sources (as BertSum)
  #   instead of skipping the pair (summaries of long documents are still worth learning)
  c.max_target_length = 64  # seq2seq: target wordpieces + [SEP]; also the longest generated output
  c.length_bucket = 16  # seq2seq: batches group similar lengths, padded to a multiple of this (0: to the max)
  c.label_smoothing = 0.1  # seq2seq: share of the target mass spread over the vocabulary
  c.beam_size = 4  # seq2seq evaluation/generation: beams (1: greedy)
  c.length_penalty = 0.6  # seq2seq: GNMT's alpha; 0 ranks by summed log-probability
  c.block_trigrams = True  # summarization: skip a sentence sharing a trigram with one already chosen
  c.drop_headline = True  # summarization: BBC-style articles open with a headline paragraph; skip it
  # --- sweep (flaxbert.sweep) ---------------------------------------------------------------------
  c.sweep = ml_collections.ConfigDict()
  c.sweep.learning_rates = (5e-5, 3e-5, 2e-5)  # the paper's grid
  c.sweep.batch_sizes = (16, 32)
  c.sweep.num_epochs = (2.0, 3.0, 4.0)
  # --- parallelism, checkpoints, logging ------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel axis; -1: all devices the other axes leave
  c.mesh.fsdp = 1  # parameter/optimizer-state sharding axis
  c.mesh.model = 1  # tensor-parallel axis
  c.sharding_rules = (("batch", ("data", "fsdp")),)  # logical axis → mesh axes (flaxbert/sharding.py)
  c.checkpoint_every_steps = 1000  # also saved after each epoch's evaluation and at the end
  c.keep_checkpoints = 2  # newest kept
  c.log_every_steps = 50  # metrics pulled to the host, TensorBoard and console
  c.eval_every_epoch = True  # evaluate after every epoch (else only at the end)

  if task.startswith("glue_"):
    c.learning_rate = 2e-5
    # CSV/JSONL exports of GLUE (HF datasets, TFDS) name the texts per task.
    c.text_a_column, c.text_b_column = GLUE_TEXT_COLUMNS.get(task[len("glue_"):], ("sentence1", "sentence2"))
  if task == "ner":
    c.learning_rate = 5e-5
  if task in ("squad_v1", "squad_v2"):
    c.learning_rate, c.batch_size, c.num_epochs, c.max_seq_length = 5e-5, 32, 2.0, 384
    c.eval_batch_size = 32
    if task == "squad_v2":
      c.batch_size = 48
  if task == "similarity":
    c.learning_rate, c.batch_size, c.num_epochs = 2e-5, 16, 4.0
    c.label_column = "score"  # STS-B's header names the score column so
  if task == "summarization":
    c.learning_rate, c.batch_size, c.num_epochs, c.max_seq_length = 5e-5, 16, 2.0, 512
    # pooling stays "mean" (each sentence's wordpieces): on BBC with all-MiniLM-L6-v2 and 424 steps it beat
    # Lead-3 by 6.6 ROUGE-1 where BertSum's "cls" (the sentence's [CLS] state) fell 0.8 short (README)
    c.eval_batch_size = 16
    c.train_split, c.eval_split = "train", "dev"
  if task in SEQ2SEQ_TASKS:
    c.learning_rate, c.batch_size, c.num_epochs, c.eval_batch_size = 1e-4, 32, 3.0, 64
    if task == "summarization_abstractive":
      c.max_source_length, c.max_target_length, c.batch_size, c.eval_batch_size = 512, 128, 16, 16
  if variant == "tiny":
    c.batch_size, c.eval_batch_size, c.num_epochs = 8, 8, 1.0
    c.max_seq_length = {"squad_v1": 64, "squad_v2": 64, "summarization": 96}.get(task, 32)
    c.doc_stride, c.max_query_length, c.max_sentences = 16, 12, 8
    c.max_source_length, c.max_target_length, c.beam_size, c.vocab_size, c.model_size = 24, 16, 2, 64, "tiny"
    c.log_every_steps, c.checkpoint_every_steps = 2, 100
  return c
