"""The seq2seq task family (BERT2BERT): translation and abstractive summarization.

Behind the one task protocol (flaxbert.finetune.tasks.base): the model is a
flaxbert.models.encoder_decoder.BertEncoderDecoder, warm-started from `config.init` as
`config.warm_start` says (bert2bert | bert2rnd | bertshare, or random: the init's architecture and
vocabulary with fresh weights, or `model.size` without init; flaxbert.models.warm_start), trained
with teacher forcing and label-smoothed cross-entropy over batches of similar lengths, the
weights the checkpoint lacks learning at `fresh_lr_scale` × the rate. Evaluation decodes every
example of each eval file with beam search (one compiled loop per batch shape) and scores the
detokenized hypotheses against the references: BLEU, case-insensitive BLEU and chrF (sacrebleu)
for translation; ROUGE-1/2/L (rouge-score, best over several references) for summaries.

Layout (transformers' bert2bert convention): source `[CLS] x [SEP]`; decoder input `[CLS] y`,
labels `y [SEP]`; generation starts at [CLS] and stops at [SEP].

Vocabulary: config.vocab, else the init checkpoint's, else a joint sentencepiece trained on both
sides of the training pairs (config.vocab_size pieces, cased unless config.lower_case).
The workdir's task.json records the warm start and lengths (settings) and generation's beam
size, length penalty, batch and bucket (defaults), so `flaxbert generate` needs only the workdir;
hypotheses.txt holds the first eval file's hypotheses (hypotheses_STEM.txt the others').
"""
import logging
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxbert.atomic import atomic_file
from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.finetune.tasks import parallel
from flaxbert.finetune.tasks.base import Session, Task, TrainingData, prefixed, recorded_config
from flaxbert.finetune.tasks.readers import ReadReport, text_lines
from flaxbert.finetune.tasks.scores import rouge_scores, translation_scores
from flaxbert.finetune.tasks.seq2seq_data import GROUPS, Seq2Seq
from flaxbert.interop import encoder_decoder
from flaxbert.interop.pretrained import load
from flaxbert.models.config import SIZES, BertConfig
from flaxbert.models.encoder_decoder import BertEncoderDecoder
from flaxbert.models.losses import token_cross_entropy
from flaxbert.models.warm_start import MODES, fresh_mask, warm_start
from flaxbert.text.tokenization import Tokenizer, load_tokenizer
from flaxbert.training import batching, optim, sharding

log = logging.getLogger("flaxbert")
WARM_STARTS = MODES + ("random",)
SETTINGS = ("warm_start", "init", "max_source_length", "max_target_length")  # what the model was trained with
DEFAULTS = ("beam_size", "length_penalty", "eval_batch_size", "length_bucket")  # what `generate` defaults to


class Seq2SeqTask(Task):
  kind = "seq2seq"

  def __init__(self, config):
    super().__init__(config)
    self.reports: dict[tuple[str, bool], ReadReport] = {}  # (spec, training) → what its read skipped
    self._eval_specs: dict[str, str] = {}  # eval set name → its spec
    self._trained_lengths: tuple[int, int] | None = None

  @classmethod
  def from_record(cls, record: dict) -> "Seq2SeqTask":
    """The task as the workdir recorded it, for commands given no config (generate, convert): its
    settings and generation defaults, all devices data-parallel."""
    return cls(recorded_config(record))

  # --- before anything is written ---------------------------------------------------------------------
  def check_config(self) -> None:
    c = self.config
    if c.warm_start not in WARM_STARTS:
      raise InputError(f"warm_start: expected one of {list(WARM_STARTS)}, got {c.warm_start!r}")
    if not c.init and c.warm_start != "random":
      raise InputError(f"init: required for warm_start={c.warm_start!r} (a BERT checkpoint; or warm_start=random)")
    scale = c.fresh_lr_scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
      raise InputError(f"fresh_lr_scale: expected a positive number, got {scale!r}")

  def _check_lengths(self, limit: int) -> None:
    """Both lengths must fit the model's positions."""
    for field in ("max_source_length", "max_target_length"):
      if not 3 <= self.config[field] <= limit:
        raise InputError(f"{field}: {self.config[field]}; expected 3 to the model's max_position_embeddings ({limit})")

  # --- data ---------------------------------------------------------------------------------------------
  def read(self, path: str, training: bool, field: str) -> list:
    c = self.config
    if not path:
      raise InputError(f"{field}: required")
    targets = c.target_fields if training or not c.eval_target_fields else c.eval_target_fields
    report = self.reports[(path, training)] = ReadReport(path)
    examples = parallel.read_spec(path, c.source_field, [f for f in targets.split(",") if f], report)
    if not examples:
      raise InputError(f"{field}: {path}: no examples ({report.reasons or 'empty'})")
    if report.skipped and not training:
      log.warning("%s: skipped %d pair(s): %s", path, report.skipped, report.reasons)
    return examples

  def eval_name(self, path: str) -> str:
    return Path(path.split("|")[-1]).name.split(".")[0]  # the target file's stem

  def eval_sets(self) -> list[tuple[str, list]]:
    self._eval_specs = {self.eval_name(p): p for p in (self.config.eval_path or "").split(",") if p}
    return super().eval_sets()

  def learn(self, train: Sequence) -> None:
    if any(e.target is None for e in train):
      raise InputError(f"train_path: {self.config.train_path}: no targets; expected SOURCE|TARGET files, a .tsv "
                       "or a .jsonl")

  # --- model ---------------------------------------------------------------------------------------------
  def load_init(self):
    c = self.config
    loaded = load(c.init) if c.init else None
    if loaded is None and c.model.size not in SIZES:
      raise InputError(f"model.size: expected one of {sorted(SIZES)}, got {c.model.size!r}")
    self._check_lengths((loaded.config if loaded is not None else BertConfig.from_size(c.model.size))
                        .max_position_embeddings)
    return loaded

  def tokenizer(self, workdir: Path, loaded, train: Sequence) -> Tokenizer:
    """The workdir's own (a resumed run, evaluation, generation), config.vocab, the init's, or a
    new joint sentencepiece."""
    c = self.config
    if (workdir / "tokenizer_config.json").is_file():
      return load_tokenizer(workdir)
    if c.vocab:
      return load_tokenizer(c.vocab, lower_case=c.lower_case)
    if loaded is not None:
      return load_tokenizer(loaded.vocab or c.init, lower_case=c.lower_case)
    from data_prep.vocab import train_sentencepiece  # pylint: disable=import-outside-toplevel
    lines = [text for e in train for text in (e.source, e.target)]
    log.info("training a joint sentencepiece vocabulary of %d pieces on %d lines", c.vocab_size, len(lines))
    try:
      return train_sentencepiece(None, workdir / "joint_vocab", c.vocab_size, lines=lines,
                                 lower_case=bool(c.lower_case))
    except InputError as e:
      raise InputError(f"vocab_size: {c.vocab_size} pieces for the joint vocabulary of {c.train_path}: {e}") from None

  def model_config(self, loaded, tokenizer: Tokenizer) -> BertConfig:
    c = self.config
    if loaded is not None:
      cfg = loaded.config
      if cfg.vocab_size != tokenizer.vocab_size:
        raise InputError(f"vocab: {tokenizer.vocab_size} tokens, but {c.init} has vocab_size {cfg.vocab_size}; "
                         "warm starting needs the checkpoint's own vocabulary (leave vocab unset)")
    else:
      cfg = BertConfig.from_size(c.model.size, vocab_size=tokenizer.vocab_size)
    return cfg.replace(hidden_dropout_prob=c.model.hidden_dropout_prob,
                       attention_probs_dropout_prob=c.model.attention_probs_dropout_prob, dtype=c.model.dtype,
                       param_dtype="float32")

  def build_model(self, cfg: BertConfig) -> BertEncoderDecoder:
    return BertEncoderDecoder(cfg, cfg, share=self.config.warm_start == "bertshare")

  def record(self) -> dict:
    c = self.config
    return {"settings": {k: (str(c[k]) if k == "init" else c[k]) for k in SETTINGS},
            "defaults": {k: c[k] for k in DEFAULTS}}

  def restore_settings(self, record: dict) -> None:
    """Evaluation keeps the config's lengths (the parameters do not depend on them: longer
    out-of-domain text may need more); prediction and generation use the trained ones. The warm
    start decides the model's shape (bertshare)."""
    self.config = self.config.copy_and_resolve_references()
    self.config.warm_start = record["settings"]["warm_start"]
    self._trained_lengths = (record["settings"]["max_source_length"], record["settings"]["max_target_length"])
    self._check_lengths(BertConfig.from_dict(record["model"]).max_position_embeddings)

  def input_shapes(self, session: Session) -> tuple:
    src = jax.ShapeDtypeStruct((1, self.config.max_source_length), jnp.int32)
    tgt = jax.ShapeDtypeStruct((1, self.config.max_target_length), jnp.int32)
    return (src, src, tgt, tgt)

  def _mode(self) -> str | None:
    return None if self.config.warm_start == "random" else self.config.warm_start

  def initial_weights(self, fresh_shapes: dict, loaded):
    mode = self._mode()
    if mode is None:
      return None, None
    return loaded.params, lambda fresh, bert: warm_start(fresh, bert, mode)

  @staticmethod
  def encoder_params(params: dict) -> dict:
    return params["encoder"]

  # --- training ------------------------------------------------------------------------------------------
  def bundle(self, session: Session) -> Seq2Seq:
    """The model, tokenizer, mesh and lengths as one: texts → source rows, pairs → training arrays, generation."""
    c = self.config
    return Seq2Seq(session.model, session.tokenizer, session.mesh, c.max_source_length, c.max_target_length)

  def training_data(self, examples: Sequence, session: Session) -> TrainingData:
    c = self.config
    report = self.reports[(c.train_path, True)]
    arrays = self.bundle(session).pairs(examples, report, c.cut_long_sources)
    # similar lengths batched together: target length first, then source length
    keys = arrays["target_mask"].sum(axis=1) * (c.max_source_length + 1) + arrays["source_mask"].sum(axis=1)

    def batch(step: int) -> dict[str, np.ndarray]:
      if c.length_bucket:
        return batching.trim(batching.grouped_batch(arrays, step, c.batch_size, c.seed, keys), GROUPS, c.length_bucket)
      return batching.train_batch(arrays, step, c.batch_size, c.seed)
    return TrainingData(arrays, c.batch_size, batch, f"{len(arrays['labels'])} training pairs")

  def optimizer(self, opt_config, loaded) -> optax.GradientTransformation:
    """flaxbert.training.optim's optimizer, whose updates of the weights the warm start leaves
    fresh (warm_start.fresh_mask) are scaled by fresh_lr_scale: they learn at that multiple of the lr."""
    has_head = loaded is not None and "predictions" in loaded.params.get("cls", {})
    return optax.chain(optim.build_optimizer(opt_config),
                       optax.masked(optax.scale(float(self.config.fresh_lr_scale)), fresh_mask(self._mode(), has_head)))

  def describe(self) -> str:
    fresh = f", the weights it lacks at {self.config.fresh_lr_scale:g}× the lr" if self._mode() else ""
    return f"{self.config.warm_start}{fresh}"

  def loss_sums(self, model, params, batch: dict, rng) -> dict:
    """Label-smoothed cross-entropy over the real target tokens, as sums with a token count."""
    logits = model.apply({"params": params}, batch["source_ids"], batch["source_mask"], batch["target_ids"],
                         batch["target_mask"], deterministic=rng is None,
                         rngs=None if rng is None else {"dropout": rng})
    nll, loss, correct = token_cross_entropy(logits, batch["labels"], float(self.config.label_smoothing))
    rows = batch.get("example_mask", jnp.ones(logits.shape[:1], jnp.int32)).astype(jnp.float32)
    w = batch["target_mask"].astype(jnp.float32) * rows[:, None]
    return {"token_loss_sum": jnp.sum(loss * w), "token_nll_sum": jnp.sum(nll * w),
            "token_correct": jnp.sum(correct * w), "token_count": jnp.sum(w)}

  def counts(self, batch: dict) -> dict:
    rows = batch["example_mask"].astype(jnp.float32)
    return {"token_count": jnp.sum(batch["target_mask"].astype(jnp.float32) * rows[:, None])}

  def objective(self, sums: dict, counts: dict):
    return sums["token_loss_sum"] / jnp.maximum(counts["token_count"], 1.0)

  # --- evaluation and generation -------------------------------------------------------------------------
  def evaluate(self, session: Session, params, evals: list, out_dir: Path | None, training: bool = False) -> dict:
    """Scores of each (name, examples); with out_dir, the hypotheses go to hypotheses.txt (first
    file) and hypotheses_NAME.txt."""
    c, results = self.config, {}
    for n, (name, examples) in enumerate(evals):
      path = self._eval_specs[name]  # read by eval_sets
      hyps = self.bundle(session).generate(params, [e.source for e in examples], c.eval_batch_size, c.beam_size,
                                            c.length_penalty, self.reports[(path, False)], c.length_bucket)
      refs = [e.references for e in examples]
      if any(not r for r in refs):
        raise InputError(f"eval_path: {path}: no references; expected SOURCE|TARGET files, a .tsv or a .jsonl")
      scores = translation_scores(hyps, refs) if c.task == "translation" else rouge_scores(hyps, refs)
      results.update(prefixed(n, name, scores))
      if out_dir is not None and jax.process_index() == 0:
        write_lines(out_dir / ("hypotheses.txt" if n == 0 else f"hypotheses_{name}.txt"), hyps)
    return results

  def export_hf(self, session: Session, params, dst, overwrite: bool, inputs) -> str:
    encoder_decoder.export_hf(session.model, params, session.tokenizer, self.config.max_target_length, dst,
                              overwrite, inputs)
    return "EncoderDecoderModel"

  def predict_file(self, session: Session, params, input_path: str, output: str) -> int:
    """`flaxbert predict`: generate_file with the config's beam settings and the trained lengths."""
    self.config.max_source_length, self.config.max_target_length = self._trained_lengths
    return self.generate_file(session, params, input_path, output)

  def generate_file(self, session: Session, params, input_path: str | Path, output: str | Path,
                    beam_size: int | None = None, length_penalty: float | None = None,
                    batch_size: int | None = None) -> int:
    """Writes one output line per line of `input_path` (a blank line gives a blank output); returns
    how many lines. Unset options take the task's settings."""
    c = self.config
    batch_size = sharding.check_batch_size("--batch_size", batch_size or c.eval_batch_size, session.mesh)
    lines = [line.strip() for line in text_lines(input_path)]
    texts = [line for line in lines if line]
    hyps = iter(self.bundle(session).generate(
        params, texts, batch_size, c.beam_size if beam_size is None else beam_size,
        c.length_penalty if length_penalty is None else length_penalty, ReadReport(str(input_path)),
        c.length_bucket) if texts else [])
    if jax.process_index() == 0:
      write_lines(storage.path(output), [next(hyps) if line else "" for line in lines])
    return len(lines)


def write_lines(path: Path, lines: Sequence[str]) -> None:
  with atomic_file(path) as tmp:
    tmp.write_text("".join(line.replace("\n", " ") + "\n" for line in lines), encoding="utf-8")
