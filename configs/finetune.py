"""Settings for `flaxbert finetune|evaluate|predict|sweep --config finetune:TASK --workdir W`.

TASK: a name of flaxbert.finetune.tasks.registry.TASKS — classification (your own CSV/TSV/JSONL with
      any label set; multi_label, regression) | glue_cola | glue_sst2 | glue_mrpc |
      glue_stsb | glue_qqp | glue_mnli | glue_qnli | glue_rte | glue_wnli | ner | squad_v1 |
      squad_v2 | similarity | summarization | translation | summarization_abstractive
      (append `,tiny` — e.g. `glue_sst2,tiny` — for the test-sized variant: short sequences, small
      batches, one epoch).

A config holds the sections every job shares (model, optim, mesh, checkpoint: configs/common.py),
the training run, and the fields of its task's family only (a GLUE config has no SQuAD fields).

Defaults are the BERT paper's fine-tuning recipe (Devlin et al. 2018, section 4 and appendix A.3):
Adam with lr in {5e-5, 3e-5, 2e-5} (`sweep`), batch 16 or 32, 2–4 epochs, 10% linear warmup then
linear decay, weight decay 0.01, dropout 0.1; SQuAD v1.1: lr 5e-5, batch 32, 2 epochs (3 in the
paper's v1.1 run), max_seq_length 384, doc_stride 128, max_query_length 64; SQuAD v2.0: batch 48,
2 epochs. Translation / abstractive summarization follow Rothe et al. 2020 (BERT2BERT: encoder and
decoder warm-started from BERT, cross-attention new; beam 4, length penalty 0.6, label smoothing
0.1), with a learning rate sized for short CPU budgets. Summarization follows BertSumExt
(max_seq_length 512, a [CLS] per sentence, 2 inter-sentence Transformer layers, 3 sentences,
trigram blocking) with mean-pooled sentence vectors (pooling=cls: BertSum's [CLS] states).
"""
import ml_collections
from ml_collections import config_dict

from configs import common
from flaxbert.finetune.tasks.glue_tsv import EXPORT_COLUMNS
from flaxbert.finetune.tasks.registry import TASKS, family_of

RENAMED = common.RENAMED


def get_config(arg: str = "glue_sst2") -> ml_collections.ConfigDict:
  task, _, variant = arg.partition(",")
  if task not in TASKS:
    raise ValueError(f"configs/finetune.py: unknown task {task!r}; expected one of {', '.join(TASKS)}")
  if variant not in ("", "tiny"):
    raise ValueError(f"configs/finetune.py: unknown variant {variant!r}; expected 'tiny' or nothing")
  kind = family_of(task)
  c = ml_collections.ConfigDict()
  c.task = task  # which task family reads, featurizes, scores (flaxbert.finetune.tasks.registry)
  # --- model and data ------------------------------------------------------------------------
  c.init = config_dict.placeholder(str)  # pretrained model: flaxbert dir/workdir, HF dir or TF1 checkpoint
  c.train_path = config_dict.placeholder(str)  # training file (GLUE TSV, CSV/JSONL, CoNLL, SQuAD JSON, …)
  c.eval_path = config_dict.placeholder(str)  # dev file(s), comma-separated; scores of the 2nd… are prefixed
  c.lower_case = config_dict.placeholder(bool)  # tokenizer casing; None: what the checkpoint's vocab says
  c.model = common.model(size="small", encoder_runs=False) if kind == "seq2seq" else common.model()
  # --- training -----------------------------------------------------------------------------
  c.batch_size = 32  # global training batch (paper: 16 or 32); packed tasks: examples a batch on average
  c.eval_batch_size = 64  # evaluation/prediction batch; the last one is padded and masked
  c.num_epochs = 3.0  # passes over the training set (paper: 2–4); fractions allowed
  c.seed = 0  # head init, data order and dropout derive from it
  # Multi-process launches (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, Slurm, Cloud
  # TPU) join with jax.distributed.initialize; false: stay one process whatever the environment says.
  c.distributed = True
  c.rng_impl = "threefry2x32"  # dropout's PRNG: threefry2x32 (mesh-invariant) | rbg | unsafe_rbg (cheaper)
  c.optim = common.optim(learning_rate=2e-5, warmup_proportion=0.1)  # schedule length: the run's steps
  c.mesh = common.mesh()
  c.checkpoint = common.checkpoint(every_steps=1000, keep=2)  # also saved after each epoch
  c.log_every_steps = 50  # metrics pulled to the host, TensorBoard and console
  c.eval_every_epoch = True  # evaluate after every epoch (else only at the end)
  # --- sweep (flaxbert.finetune.sweep) ------------------------------------------------------
  c.sweep = ml_collections.ConfigDict()
  c.sweep.learning_rates = (5e-5, 3e-5, 2e-5)  # the paper's grid
  c.sweep.batch_sizes = (16, 32)
  c.sweep.num_epochs = (2.0, 3.0, 4.0)
  # --- the task family's own fields ------------------------------------------------------------
  FAMILY_FIELDS[kind](c)

  if task == "classification":
    c.text_a_column, c.text_b_column = "text", ""  # a single text unless text_b_column is named
    c.multi_label = False  # the label column holds several labels: sigmoid outputs, binary cross-entropy,
    #   micro/macro-F1 at a threshold chosen on the (first) dev file and recorded for predict/evaluate
    c.label_delimiter = config_dict.placeholder(str)  # multi_label: split a label cell on this (e.g. "|");
    #   None: a JSON list (a list value in JSONL, its JSON text in a CSV/TSV cell)
    c.regression = False  # the label is a number: one output, squared error; Pearson, Spearman, MSE
  if task.startswith("glue_"):
    # CSV/JSONL exports of GLUE (HF datasets, TFDS) name the texts per task.
    c.text_a_column, c.text_b_column = EXPORT_COLUMNS.get(task[len("glue_"):], ("sentence1", "sentence2"))
  if task == "ner":
    c.optim.learning_rate = 5e-5
  if kind == "qa":
    c.optim.learning_rate, c.batch_size, c.num_epochs, c.max_seq_length = 5e-5, 32, 2.0, 384
    c.eval_batch_size = 32
    if task == "squad_v2":
      c.batch_size = 48
      c.null_score_diff_threshold = 0.0  # predict no answer when null − best span score exceeds it
  if task == "similarity":
    c.optim.learning_rate, c.batch_size, c.num_epochs = 2e-5, 16, 4.0
  if task == "summarization":
    c.optim.learning_rate, c.batch_size, c.num_epochs, c.max_seq_length = 5e-5, 16, 2.0, 512
    c.eval_batch_size = 16
  if kind == "seq2seq":
    c.optim.learning_rate, c.batch_size, c.num_epochs, c.eval_batch_size = 1e-4, 32, 3.0, 64
    if task == "summarization_abstractive":
      c.max_source_length, c.max_target_length, c.batch_size, c.eval_batch_size = 512, 128, 16, 16
      c.cut_long_sources = True  # summaries of long documents are still worth learning (as BertSum)
  if variant == "tiny":
    c.batch_size, c.eval_batch_size, c.num_epochs = 8, 8, 1.0
    c.log_every_steps, c.checkpoint.every_steps = 2, 100
    if "max_seq_length" in c:
      c.max_seq_length = {"qa": 64, "extractive_summarization": 96}.get(kind, 32)
    if kind == "qa":
      c.doc_stride, c.max_query_length = 16, 12
    if kind == "extractive_summarization":
      c.max_sentences = 8
    if kind == "seq2seq":
      c.max_source_length, c.max_target_length, c.beam_size, c.vocab_size, c.model.size = 24, 16, 2, 64, "tiny"
  return c


def _encoder(c: ml_collections.ConfigDict, packed: bool = False) -> None:
  """What every BERT-with-a-head family reads."""
  c.max_seq_length = 128  # wordpieces per sequence, [CLS]/[SEP] included; longer inputs truncated/windowed
  if packed:
    c.max_examples_per_row = 16  # sequence packing puts up to this many examples in one max_seq_length
    #   row, each attending only to itself (flaxbert.training.packing); 1: one example a row


def _columns(c: ml_collections.ConfigDict, label: str) -> None:
  c.text_a_column = "sentence1"  # CSV/JSONL files: the first text's column (GLUE: the export's names)
  c.text_b_column = "sentence2"  # CSV/JSONL: the second text's column ("" for single-sentence tasks)
  c.label_column = label  # CSV/JSONL: the label (or score) column


def _classification(c: ml_collections.ConfigDict) -> None:
  _encoder(c, packed=True)
  _columns(c, "label")
  # GLUE TSVs: skip (and count, in the log) rows with the wrong number of columns instead of stopping
  # at the first, as the reference processors do with QQP's few broken rows.
  c.skip_malformed_rows = False


def _ner(c: ml_collections.ConfigDict) -> None:
  _encoder(c, packed=True)


def _qa(c: ml_collections.ConfigDict) -> None:
  _encoder(c, packed=True)
  c.doc_stride = 128  # stride between document windows
  c.max_query_length = 64  # question wordpieces kept
  c.n_best_size = 20  # start/end candidates per window
  c.max_answer_length = 30  # longest answer span in wordpieces


def _similarity(c: ml_collections.ConfigDict) -> None:
  _encoder(c)
  _columns(c, "score")  # STS-B's header names the score column so
  c.pooling = "mean"  # sentence vectors: mean over the mask | cls
  c.score_scale = 5.0  # gold scores are divided by this to compare with cosine (STS: 0–5)


def _extractive_summarization(c: ml_collections.ConfigDict) -> None:
  _encoder(c)
  c.train_split = "train"  # JSONL with a "split" field: which rows train
  c.eval_split = "dev"  # … and which rows evaluate (and are predicted)
  # mean over each sentence's wordpieces | cls (BertSum's [CLS] states); on BBC with all-MiniLM-L6-v2
  # and 424 steps mean beat Lead-3 by 6.6 ROUGE-1 where cls fell 0.8 short (docs/finetune.md)
  c.pooling = "mean"
  c.summary_sentences = 3  # sentences selected per document (Lead-3's budget)
  c.oracle_sentences = 3  # greedy ROUGE oracle size for the training labels
  c.inter_sentence_layers = 2  # Transformer layers over the sentence vectors (BertSumExt: 2; 0: linear)
  c.max_sentences = 64  # sentence slots per document (ones that fit in max_seq_length)
  c.block_trigrams = True  # skip a sentence sharing a trigram with one already chosen
  c.drop_headline = True  # BBC-style articles open with a headline paragraph; skip it


def _seq2seq(c: ml_collections.ConfigDict) -> None:
  c.warm_start = "bert2bert"  # bert2bert | bert2rnd | bertshare | random (init's architecture and vocab, fresh weights)
  c.fresh_lr_scale = 5.0  # learning-rate multiplier of the weights the checkpoint lacks (cross-attention,
  #   a missing MLM head; bert2rnd: the decoder), so they catch up with the pretrained ones (1.0: one
  #   rate for all, as Rothe et al.; at short budgets the decoder then ignores its source)
  c.vocab = config_dict.placeholder(str)  # vocab.txt / spm.model for both sides; None: init's, or
  #   without init a joint sentencepiece trained on both sides of the training pairs (model.size: its size)
  c.vocab_size = 8000  # pieces of that joint sentencepiece
  c.source_field = "source"  # .jsonl files: the source text (or list of sentences, joined)
  c.target_fields = "target"  # .jsonl: reference field(s), comma-separated; the first one trains
  c.eval_target_fields = config_dict.placeholder(str)  # … of the eval files when they differ (None: target_fields)
  c.max_source_length = 64  # source wordpieces with [CLS]/[SEP]; longer training pairs are skipped
  #   (counted), longer eval sources cut
  c.cut_long_sources = False  # cut longer training sources (as BertSum) instead of skipping the pair
  c.max_target_length = 64  # target wordpieces + [SEP]; also the longest generated output
  c.length_bucket = 16  # batches group similar lengths, padded to a multiple of this (0: to the max)
  c.label_smoothing = 0.1  # share of the target mass spread over the vocabulary
  c.beam_size = 4  # evaluation/generation: beams (1: greedy)
  c.length_penalty = 0.6  # GNMT's alpha; 0 ranks by summed log-probability


FAMILY_FIELDS = {"classification": _classification, "ner": _ner, "qa": _qa, "similarity": _similarity,
                 "extractive_summarization": _extractive_summarization, "seq2seq": _seq2seq}
