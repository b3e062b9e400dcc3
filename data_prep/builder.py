"""The TFDS dataset builder for BERT pretraining examples, and `prepare(config)` around it.

    flaxbert prepare --input CORPUS --vocab vocab.txt --output_dir D [...]   # prepare()
    tfds build bert_pretraining --imports data_prep.builder --manual_dir CORPUS_AND_VOCAB
        [--config dynamic] [--beam_pipeline_options=...]                   # TFDS's own CLI

A build has two stages. (1) `corpus.split_documents` streams the text into chunk files of about
`chunk_chars` characters. (2) Each chunk is tokenized, and every dupe pass over it becomes one
shard: `instances.create_instances` (static masking) or `create_pairs` (dynamic masking), seeded
by (seed, chunk, pass). Stage 2 runs in worker processes that encode tf.train.Examples with
`example_codec` and write array_record shards directly; given a Beam runner or options (the `beam`
extra: `beam_runner`, `beam_options`, or `tfds build --beam_pipeline_options`) the same work units
run as an Apache Beam pipeline instead (data_prep/beam.py), on as many machines as the runner has,
with the same shards and metadata. TFDS writes into an `incomplete.*` folder and renames it when
done, and `prepare` adds a second such step for the output folder, so an interrupted build never
leaves a dataset that loads as complete. The vocabulary is saved inside the dataset, and each
split's example lengths (`LENGTHS_FILE`), from which packing plans its rows without reading the
examples.
"""
import dataclasses
import errno
import functools
import json
import logging
import multiprocessing
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from data_prep import beam as beam_lib, corpus as corpus_lib, sources, vocab
from data_prep.example_codec import ExampleEncoder
from data_prep.format import LENGTHS_FILE, feature_kinds, is_prepared
from data_prep.instances import Corpus, InstanceConfig, create_instances, create_pairs
from data_prep.settings import prepare_settings
from flaxbert import storage
from flaxbert.atomic import atomic_directory, within
from flaxbert.errors import InputError
from flaxbert.text.tokenization import load_tokenizer


@dataclasses.dataclass(frozen=True)
class _Chunk:
  """One unit of stage 2: a text chunk, tokenized once, then one shard per dupe pass."""
  path: str
  index: int
  split: str
  passes: tuple[int, ...]
  masking: str
  instance_config: InstanceConfig
  vocab: str  # the tokenizer's folder (saved into the work directory by stage 1)

  def corpus(self) -> Corpus | None:
    return corpus_lib.tokenize_chunk(Path(self.path), _tokenizer(self.vocab))

  def arrays(self, corpus: Corpus | None, dupe_pass: int) -> dict[str, np.ndarray]:
    kinds = feature_kinds(self.masking)
    if corpus is None:
      return {k: np.zeros((0,), np.int32) for k in kinds}
    tok = _tokenizer(self.vocab)
    # A seed of its own per (chunk, pass, split): shards are independent and reproducible.
    seed = int(np.random.SeedSequence([self.instance_config.seed, self.index, dupe_pass,
                                       0 if self.split == "train" else 1]).generate_state(1)[0])
    config = dataclasses.replace(self.instance_config, dupe_factor=1, seed=seed)
    ids = dict(vocab_size=tok.vocab_size, cls_id=tok.cls_id, sep_id=tok.sep_id, pad_id=tok.pad_id)
    if self.masking == "dynamic":
      out = create_pairs(corpus, config, **ids)
    else:
      table = _continuation_table(self.vocab) if config.whole_word_mask else None
      out = create_instances(corpus, config, mask_id=tok.mask_id, continuation=table, **ids)
    return {k: getattr(out, k) for k in kinds}


@functools.lru_cache(maxsize=2)
def _tokenizer(vocab: str):
  return load_tokenizer(vocab)


@functools.lru_cache(maxsize=2)
def _continuation_table(vocab: str) -> np.ndarray:
  """[vocab_size] bool: which ids are continuation pieces (whole-word masking); once per process."""
  tok = _tokenizer(vocab)
  return np.array([tok.is_continuation(t) for t in tok.vocab])


def _write_chunk(job: tuple[_Chunk, list[str]]) -> dict:
  """Stage 2 in a worker: tokenize a chunk, then encode and write one shard per dupe pass (none
  for a pass without examples: counts 0, and `_finish` leaves it out)."""
  chunk, paths = job
  encoder = ExampleEncoder(feature_kinds(chunk.masking))
  corpus = chunk.corpus()
  counts, sizes, lengths = [], [], []
  dtype = np.min_scalar_type(chunk.instance_config.max_seq_length)  # uint16 up to 65,535 tokens
  for dupe_pass, path in zip(chunk.passes, paths):
    arrays = chunk.arrays(corpus, dupe_pass)
    counts.append(len(arrays["input_ids"]))
    if not counts[-1]:
      sizes.append(0), lengths.append(np.zeros(0, dtype))
      continue
    try:
      writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
      for record in encoder.encode_batch(arrays):
        writer.write(record)
      writer.close()
    except RuntimeError as e:  # ArrayRecord reports a failed write(): as the OSError it is
      raise _os_error(e, path) from None
    sizes.append(os.path.getsize(path))
    lengths.append(np.count_nonzero(arrays["input_mask"], axis=-1).astype(dtype))
  return {"counts": counts, "bytes": sizes, "lengths": lengths, "tokens": 0 if corpus is None else len(corpus.tokens),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _os_error(error: RuntimeError, path: str) -> Exception:
  """ArrayRecord's RuntimeError for a failed write ("write() failed: No space left on device; …")
  as an OSError with its errno, so that it is reported as the output's (flaxbert.atomic); other
  errors unchanged."""
  for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EIO):
    if os.strerror(code) in str(error):
      return OSError(code, os.strerror(code), path)
  return error


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """A DatasetInfo that never looks for itself on GCS. A builder whose folder holds no
  dataset_info.json yet (every new `prepare`) calls initialize_from_bucket, which in tfds 4.9 makes
  an empty tempfile.mkdtemp("tfds") folder before it finds GCS disabled, and never removes it: one
  stray folder in the temp dir per prepare. A dataset written by `flaxbert prepare` is never there."""

  def initialize_from_bucket(self) -> None:
    pass


class BertPretraining(tfds.core.ShardBasedBuilder):
  """Masked-LM + next-sentence examples in google-research/bert's feature layout."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="original", description="static masking, NSP"),
                     tfds.core.BuilderConfig(name="dynamic", description="unmasked pairs")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("With `tfds build`, put the corpus text files and the vocabulary "
                                  "(vocab.txt or spm.model) in --manual_dir.")

  def __init__(self, *, settings: ml_collections.ConfigDict | None = None, **kwargs):
    self._explicit_settings = settings
    if settings is not None:
      kwargs.setdefault("config", "dynamic" if settings.masking == "dynamic" else "original")
    super().__init__(**kwargs)
    self._chunks: corpus_lib.Chunks | None = None
    self._tokenizer = None

  @property
  def settings(self) -> ml_collections.ConfigDict:
    if self._explicit_settings is not None:
      return self._explicit_settings
    return prepare_settings(self.builder_config.name)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.settings
    shapes = {"input_ids": s.max_seq_length, "input_mask": s.max_seq_length,
              "segment_ids": s.max_seq_length, "masked_lm_positions": s.max_predictions_per_seq,
              "masked_lm_ids": s.max_predictions_per_seq, "masked_lm_weights": s.max_predictions_per_seq}
    features = {}
    for name, kind in feature_kinds(s.masking).items():
      dtype = np.float32 if kind == "float" else np.int32
      features[name] = (tfds.features.Scalar(dtype=dtype) if name == "next_sentence_labels"
                        else tfds.features.Tensor(shape=(shapes[name],), dtype=dtype))
    return _LocalDatasetInfo(
        builder=self, description=__doc__, features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,  # order is irrelevant: the input pipeline reads by permuted index
        metadata=tfds.core.MetadataDict())

  # --- stage 1 ------------------------------------------------------------------------------

  def _inputs(self, dl_manager) -> tuple[list[str], str | None]:
    s = self.settings
    inputs, vocab = list(s.input), s.vocab
    if not inputs and not s.tfds_name:
      manual = Path(dl_manager.manual_dir)
      vocab = vocab or next((str(manual / n) for n in ("vocab.txt", "spm.model") if (manual / n).exists()), None)
      inputs = [str(p) for p in sorted(manual.iterdir()) if p.is_file() and str(p) != vocab
                and p.name not in ("tokenizer_config.json", "spm.vocab")]
    return inputs, vocab

  def _documents(self, inputs: list[str], stats: sources.SourceStats) -> Iterator[list[str]]:
    s = self.settings
    if s.tfds_name:
      yield from sources.read_tfds(s.tfds_name, s.tfds_split, s.tfds_text_feature, s.tfds_data_dir, stats)
    for path in sources.list_files(inputs, stats) if inputs else []:
      yield from sources.read_file(path, s.input_format, stats)

  def _plan(self, dl_manager) -> dict[str, list[_Chunk]]:
    """Stage 1: the vocabulary (given or trained), then the text split into chunk files."""
    s = self.settings
    inputs, vocab = self._inputs(dl_manager)
    self._work = work = Path(tempfile.mkdtemp(prefix="chunks-", dir=self.data_dir))
    if vocab is None:
      vocab = self._train_vocab(inputs, work / "trained_vocab")
    self._tokenizer = tok = load_tokenizer(vocab, lower_case=s.lower_case)
    tok.save(work / "vocab")  # what the workers load: vocabulary and casing together
    stats = sources.SourceStats()
    self._chunks = chunks = corpus_lib.split_documents(
        self._documents(inputs, stats), work, chunk_chars=s.chunk_chars,
        validation_fraction=s.validation_fraction, source=_describe_source(s.tfds_name, inputs))
    chunks.stats = stats
    if stats.skipped_datasets or stats.duplicate_paths:
      logging.warning("inputs: skipped %d prepared dataset folder(s) %s; %d files named more than once, read once",
                      len(stats.skipped_datasets), stats.skipped_datasets[:3], stats.duplicate_paths)
    for split, count in chunks.documents.items():
      if count == 1 and s.random_next_sentence:
        logging.warning("the %s split holds one document: it has no other document to draw random next "
                        "sentences from, so all its pairs are real continuations (label 0); hold out more "
                        "documents (validation_fraction) for a balanced next-sentence split", split)
    config = InstanceConfig(
        max_seq_length=s.max_seq_length, max_predictions_per_seq=s.max_predictions_per_seq,
        masked_lm_prob=s.masked_lm_prob, short_seq_prob=s.short_seq_prob, dupe_factor=s.dupe_factor,
        random_next_sentence=s.random_next_sentence, whole_word_mask=s.whole_word_mask, seed=s.seed)
    common = dict(masking=s.masking, instance_config=config, vocab=str(work / "vocab"))
    return {
        "train": [_Chunk(str(c), i, "train", tuple(range(s.dupe_factor)), **common)
                  for i, c in enumerate(chunks.train)],
        "validation": [_Chunk(str(c), i, "validation", (0,), **common) for i, c in enumerate(chunks.validation)],
    }

  def _train_vocab(self, inputs: list[str], directory: Path) -> str:
    """A vocabulary learnt from the corpus itself (one extra pass over the text)."""
    s = self.settings
    lines = (sentence for doc in self._documents(inputs, sources.SourceStats()) for sentence in doc)
    if s.train_vocab_kind == "wordpiece":
      vocab.train_wordpiece(None, directory, s.train_vocab_size, s.lower_case, lines=lines)
    elif s.train_vocab_kind in ("sentencepiece_unigram", "sentencepiece_bpe"):
      vocab.train_sentencepiece(None, directory, s.train_vocab_size, s.train_vocab_kind.split("_")[1],
                                s.lower_case, lines=lines)
    else:
      raise InputError(f"train_vocab_kind: expected wordpiece, sentencepiece_unigram or sentencepiece_bpe, "
                       f"got {s.train_vocab_kind!r}")
    return str(directory)

  # --- stage 2 ------------------------------------------------------------------------------

  def _shard_iterators_per_split(self, dl_manager):
    """Required by ShardBasedBuilder, never called: `_download_and_prepare` writes the shards itself,
    here or as a Beam pipeline of its own (data_prep/beam.py says why not TFDS's Beam writer)."""
    raise NotImplementedError("BertPretraining writes its shards in _download_and_prepare")

  def _download_and_prepare(self, dl_manager, download_config=None):
    """Stage 1, then stage 2 on this machine or, given a Beam runner or options, as a Beam pipeline:
    the same work units writing the same shards, finished and recorded alike."""
    beam = beam_lib.resolve(download_config.beam_runner, download_config.beam_options) if download_config else None
    self._work, self._tokens, self._peak_worker_rss_mb, self._lengths, self._empty_shards = None, None, None, {}, {}
    self._beam = None
    try:
      plan = self._plan(dl_manager)
      jobs = self._jobs(plan)
      if beam is None:
        results = self._write_locally(jobs)
      else:
        results, self._beam = beam_lib.run(beam, _write_chunk, jobs, self._work / "beam_results")
      self._finish(plan, jobs, results)
      self._record_metadata()
    finally:
      if self._work is not None:
        shutil.rmtree(self._work, ignore_errors=True)

  def _jobs(self, plan: dict[str, list[_Chunk]]) -> list[tuple[_Chunk, list[str]]]:
    """The work units: each chunk with the shard paths of its passes, numbered through its split."""
    jobs = []
    for split, chunks in plan.items():
      template = self._get_filename_template(split_name=split)
      total = sum(len(c.passes) for c in chunks)
      paths = iter(os.fspath(template.sharded_filepath(shard_index=i, num_shards=total)) for i in range(total))
      jobs.extend((chunk, [next(paths) for _ in chunk.passes]) for chunk in chunks)
    return jobs

  def _write_locally(self, jobs: list[tuple[_Chunk, list[str]]]) -> list[dict]:
    """Stage 2 on this machine: chunks in parallel worker processes, shards written directly."""
    workers = min(self.settings.num_workers or os.cpu_count() or 1, len(jobs))
    if workers == 1:
      return [_write_chunk(j) for j in jobs]
    # forkserver: workers start clean (no inherited threads) and import only what they need.
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
      return pool.map(_write_chunk, jobs, chunksize=1)

  def _finish(self, plan: dict[str, list[_Chunk]], jobs: list[tuple[_Chunk, list[str]]], results: list[dict]) -> None:
    """The splits from the units' results: the passes that give no example (too little text in their
    chunk) are left out, and a split with none at all is an error that says why."""
    infos = []
    for split in plan:
      mine = [r for (chunk, _), r in zip(jobs, results) if chunk.split == split]
      counts = [n for r in mine for n in r["counts"]]
      if not sum(counts):
        raise InputError(_empty_split_error(split, self._chunks.documents.get(split, 0),
                                            sum(r["tokens"] for r in mine), self.settings))
      written = [path for (chunk, paths) in jobs if chunk.split == split for path in paths]
      self._empty_shards[split] = _drop_empty_shards(self._get_filename_template(split_name=split), written, counts)
      if self._empty_shards[split]:
        logging.warning("the %s split: %d of its %d work units (chunk × dupe pass) gave no example (no tokens, "
                        "or too little text to pair) and were left out", split, self._empty_shards[split], len(counts))
      self._lengths[split] = np.concatenate([n for r in mine for n in r["lengths"]] or [np.zeros(0, np.uint16)])
      infos.append(tfds.core.SplitInfo(
          name=split, shard_lengths=[n for n in counts if n], num_bytes=sum(sum(r["bytes"]) for r in mine),
          filename_template=self._get_filename_template(split_name=split)))
    self.info.set_splits(tfds.core.SplitDict(infos))
    self._tokens = sum(r["tokens"] for r in results)
    self._peak_worker_rss_mb = max(r["peak_rss_mb"] for r in results)

  def _record_metadata(self) -> None:
    s, tok, chunks = self.settings, self._tokenizer, self._chunks
    tok.save(self.data_dir)
    for split, lengths in self._lengths.items():
      np.save(Path(self.data_dir) / LENGTHS_FILE.format(split=split), lengths)
    self.info.metadata.update({
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.to_dict().items()},
        "tokenizer": {"kind": tok.kind, "lower_case": tok.lower_case, "vocab_size": tok.vocab_size,
                      "pad_id": tok.pad_id, "cls_id": tok.cls_id, "sep_id": tok.sep_id, "mask_id": tok.mask_id},
        "tokens": self._tokens,
        "peak_worker_rss_mb": self._peak_worker_rss_mb,
        "sources": dataclasses.asdict(chunks.stats),
        "sources_summary": chunks.stats.summary(),
        "documents": chunks.documents,  # per split
        "lengths_files": {split: LENGTHS_FILE.format(split=split) for split in self._lengths},
        "empty_work_units": self._empty_shards,  # per split: passes without examples, left out
        "beam": self._beam,  # None, or stage 2's Beam run: runner, work units and examples counted, workers
    })


def _drop_empty_shards(template, paths: list[str], counts: list[int]) -> int:
  """Renames the shards written (those with examples; `paths` in index order of all passes) to the
  names of a split of only them; the number left out."""
  kept = [p for p, n in zip(paths, counts) if n]
  if len(kept) < len(paths):
    for i, path in enumerate(kept):
      os.rename(path, os.fspath(template.sharded_filepath(shard_index=i, num_shards=len(kept))))
  return len(paths) - len(kept)


def _empty_split_error(split: str, documents: int, tokens: int, s: ml_collections.ConfigDict) -> str:
  """Why a split has no example, and what to do, in one line."""
  if not tokens:
    why = "its text has no token (only characters the tokenizer drops: control or replacement characters)"
  elif s.random_next_sentence and documents == 1:
    why = ("it holds one document with a single sentence that has tokens, and with next-sentence "
           "prediction a document alone in its split needs two to make a pair")
  else:
    why = "its documents are too short to make an example"
  return (f"the {split} split ({documents} document(s), {tokens} tokens) gave no example: {why}; add text "
          f"(blank lines separate documents) or change validation_fraction ({s.validation_fraction})")


def prepare(settings: ml_collections.ConfigDict) -> tuple[Path, dict]:
  """Builds the dataset into settings.output_dir (atomically); returns it and its metadata."""
  if not settings.output_dir:
    raise InputError("output_dir: required (where the dataset is written)")
  if not settings.input and not settings.tfds_name:
    raise InputError("input: required (text files or folders), or tfds_name")
  beam = beam_lib.resolve(settings.beam_runner, settings.beam_options, settings.output_dir)  # errors before any work
  output = storage.path(settings.output_dir)
  inputs = [*(settings.input or ()), settings.vocab]
  for path in settings.input or ():  # a dataset there would be read as text by the next prepare of `path`
    if storage.path(path).is_dir() and within(output, path) and storage.absolute(output) != storage.absolute(path):
      raise InputError(f"{output}: is inside the input folder {path}, whose files are all read as text; "
                       "choose an output folder outside the inputs")
  with atomic_directory(output, settings.overwrite, inputs, is_prepared, "dataset written by `flaxbert prepare`",
                        complete=("dataset_info.json", "metadata.json")) as tmp:
    builder = BertPretraining(settings=settings, data_dir=tmp / "_build", file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp), beam_runner=beam and beam.name, beam_options=beam and beam.options))
    for item in Path(builder.data_dir).iterdir():
      item.rename(tmp / item.name)
    shutil.rmtree(tmp / "_build")
  metadata = json.loads((output / "metadata.json").read_text())
  return output, metadata


def _describe_source(tfds_name: str | None, inputs: list[str]) -> str:
  """The input as errors name it: the TFDS dataset and/or the first input paths."""
  named = ([f"tfds:{tfds_name}"] if tfds_name else []) + list(inputs[:3])
  more = f" (+{len(inputs) - 3} more)" if len(inputs) > 3 else ""
  return "input " + (", ".join(named) + more if named else "(none)")
