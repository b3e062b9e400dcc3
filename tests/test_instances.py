"""Pretraining instances: every rule of the original algorithm on crafted inputs, and statistics."""
import itertools
import random

import numpy as np
import pytest

from data_prep import instances as inst
from data_prep.instances import (Corpus, InstanceConfig, create_instances, create_pairs, mask_pairs,
                                 truncate_seq_pair)
from data_prep.masking import mask_tokens, num_to_predict
from flaxbert.errors import InputError

PAD, CLS, SEP, MASK = 0, 1, 2, 3
FIRST = 10  # first text id in the crafted corpora: token id = FIRST + position in the corpus


def unique_docs(seg_lengths: list[list[int]]):
  """Documents whose ids are FIRST + global position; (documents, doc_of[id], doc_end[id])."""
  docs, doc_of, doc_end, pos = [], [], [], FIRST
  for d, lengths in enumerate(seg_lengths):
    start, bounds = pos, np.cumsum([pos] + lengths)
    docs.append([np.arange(a, b, dtype=np.int32) for a, b in zip(bounds[:-1], bounds[1:])])
    pos = int(bounds[-1])
    doc_of += [d] * (pos - start)
    doc_end += [pos] * (pos - start)
  pad = [-1] * FIRST
  return docs, np.array(pad + doc_of), np.array(pad + doc_end)


def split(pairs, r: int):
  """A, B token ids of row r."""
  ids, seg, n = pairs.input_ids[r], pairs.segment_ids[r], pairs.input_mask[r].sum()
  la = int((seg[:n] == 0).sum()) - 2
  return ids[1:1 + la], ids[la + 2:n - 1]


def pairs_of(docs, vocab=100_000, **config):
  return create_pairs(docs, InstanceConfig(**config), vocab_size=vocab, cls_id=CLS, sep_id=SEP)


def contiguous(x) -> bool:
  return len(x) > 0 and bool(np.all(np.diff(x) == 1))


def test_config_defaults_and_validation():
  c = InstanceConfig()
  assert (c.max_seq_length, c.max_predictions_per_seq, c.masked_lm_prob, c.short_seq_prob,
          c.dupe_factor, c.random_next_sentence, c.whole_word_mask, c.seed) == (
              128, 20, 0.15, 0.1, 10, True, False, 12345)
  assert c.max_num_tokens == 125 and InstanceConfig(random_next_sentence=False).max_num_tokens == 126
  for field, bad in [("max_seq_length", 4), ("max_seq_length", True), ("dupe_factor", 0), ("seed", -1),
                     ("masked_lm_prob", 1.5), ("short_seq_prob", -0.1), ("whole_word_mask", "yes"),
                     ("max_predictions_per_seq", 0), ("masked_lm_prob", "0.1")]:
    with pytest.raises(InputError, match=f"InstanceConfig.{field}"):
      InstanceConfig(**{field: bad})


def test_corpus_drops_empty_and_rejects_bad_input():
  docs = [[np.array([], np.int32)], [np.array([5, 6]), [], np.array([7])], [], [np.array([8])]]
  corpus = Corpus.from_documents(docs)
  assert corpus.tokens.tolist() == [5, 6, 7, 8] and corpus.document_ids.tolist() == [1, 3]
  assert corpus.segment_bounds.tolist() == [0, 2, 3, 4] and corpus.document_bounds.tolist() == [0, 2, 3]
  with pytest.raises(InputError, match="document 0, segment 1: expected a 1-D array"):
    Corpus.from_documents([[np.array([1]), np.zeros((2, 2), np.int32)]])
  with pytest.raises(InputError, match="document 0, segment 0"):
    Corpus.from_documents([[np.array([1.5])]])
  with pytest.raises(InputError, match="Corpus: expected int32 tokens, non-empty segments"):
    Corpus(np.array([5, 6], np.int32), np.array([0, 2, 2]), np.array([0, 2]), np.array([0]))
  with pytest.raises(InputError, match="at least one non-empty segment"):
    Corpus.from_documents([[], [[]]])
  with pytest.raises(InputError, match=r"token ids in \[0, 50\)"):
    pairs_of([[np.array([10, 60])]], vocab=50)
  with pytest.raises(InputError, match="mask_id"):
    create_instances([[np.array([10])]], InstanceConfig(), vocab_size=50, cls_id=1, sep_id=2, mask_id=50)
  with pytest.raises(InputError, match="continuation"):
    create_instances([[np.array([10])]], InstanceConfig(whole_word_mask=True), vocab_size=50,
                     cls_id=1, sep_id=2, mask_id=3)


def test_one_segment_documents_always_get_a_random_next_sentence_from_another_document():
  docs, doc_of, _ = unique_docs([[8]] * 5)
  pairs = pairs_of(docs, max_seq_length=32, dupe_factor=60)
  assert len(pairs) == 300 and pairs.next_sentence_labels.tolist() == [1] * 300
  partners = set()
  for r in range(len(pairs)):
    a, b = split(pairs, r)
    assert a.tolist() == docs[pairs.document[r]][0].tolist()  # 8 + 8 <= 29: nothing truncated
    assert len(set(doc_of[b])) == 1 and doc_of[b[0]] != pairs.document[r] and len(b) == 8
    partners.add((int(pairs.document[r]), int(doc_of[b[0]])))
  assert len(partners) == 20  # every other document is drawn
  # A corpus of one document has no other document: the original takes B from the document itself
  # and labels it random; here a one-segment chunk makes no pair, a longer one a real continuation.
  assert len(pairs_of(docs[:1], max_seq_length=32, dupe_factor=3)) == 0
  one, _, _ = unique_docs([[5] * 12])
  alone = pairs_of(one, max_seq_length=64, short_seq_prob=0.0, dupe_factor=20)  # 60 tokens: no truncation
  assert len(alone) == 20 and alone.next_sentence_labels.tolist() == [0] * 20
  for r in range(len(alone)):
    a, b = split(alone, r)
    tokens = np.concatenate(one[0]).tolist()
    start = tokens.index(a[0])
    assert tokens[start:start + len(a) + len(b)] == a.tolist() + b.tolist()  # B continues A


def test_put_back_and_the_next_sentence_coin():
  """Two 6-token segments: heads → (seg0, random) and (seg1, random); tails → (seg0, seg1)."""
  docs, _, _ = unique_docs([[6, 6]] * 4000)
  pairs = pairs_of(docs, max_seq_length=32, short_seq_prob=0.0, dupe_factor=1)
  by_doc = {}
  for r in range(len(pairs)):
    a, b = split(pairs, r)
    by_doc.setdefault(int(pairs.document[r]), []).append((a[0], len(a), b[0], int(pairs.next_sentence_labels[r])))
  tails = 0
  for d, rows in by_doc.items():
    s0, s1 = docs[d][0][0], docs[d][1][0]
    if len(rows) == 1:
      assert rows == [(s0, 6, s1, 0)]
      tails += 1
    else:
      assert sorted((a, n, label) for a, n, _, label in rows) == [(s0, 6, 1), (s1, 6, 1)]
  assert len(by_doc) == 4000 and abs(tails / 4000 - 0.5) < 0.03


def test_chunks_fill_the_target_and_tile_the_document():
  """One-token segments: chunks hold exactly max_num_tokens; A, (B if actual next), A, … tile a doc."""
  rng = np.random.default_rng(0)
  docs, doc_of, doc_end = unique_docs([[1] * int(n) for n in rng.integers(25, 120, 60)])
  pairs = pairs_of(docs, max_seq_length=13, short_seq_prob=0.0, dupe_factor=1)  # max_num_tokens 10
  a_lengths = set()
  for d, doc in enumerate(docs):
    rows = sorted((split(pairs, r) + (int(pairs.next_sentence_labels[r]),)
                   for r in np.flatnonzero(pairs.document == d)), key=lambda x: x[0][0])
    cursor, end = int(doc[0][0]), int(doc[-1][0]) + 1
    for a, b, label in rows:
      assert a[0] == cursor and contiguous(a) and 1 <= len(a) <= 9 and contiguous(b)
      if label == 0:
        assert b[0] == a[-1] + 1 and (len(a) + len(b) == 10 or b[-1] + 1 == end)
        a_lengths.add(len(a))
        cursor = int(b[-1]) + 1
      else:  # B filled to 10 - len(A) from another document, unless that one ended
        assert doc_of[b[0]] != d and (len(a) + len(b) == 10 or b[-1] + 1 == doc_end[b[0]])
        cursor = int(a[-1]) + 1
    assert cursor == end
  assert a_lengths == set(range(1, 10))


def test_truncate_seq_pair_trims_the_longer_side():
  rng = random.Random(0)
  for m, la, lb in itertools.product((20, 21), range(1, 31), range(1, 31)):
    a, b = la, lb
    while a + b > m:  # the rule, restated: the longer one loses a token; B on a tie
      if a > b:
        a -= 1
      else:
        b -= 1
    fa, ba, fb, bb = truncate_seq_pair(la, lb, m, rng)
    assert (la - fa - ba, lb - fb - bb) == (a, b) and min(fa, ba, fb, bb) >= 0
  assert truncate_seq_pair(11, 11, 21, rng)[:2] == (0, 0)
  trims = np.array([truncate_seq_pair(40, 5, 20, rng) for _ in range(2000)])
  assert (trims[:, 2:] == 0).all() and (trims[:, :2].sum(1) == 25).all()
  assert abs(trims[:, 0].mean() - 12.5) < 0.3  # front or back with probability 0.5 each


def test_truncation_in_pairs_keeps_contiguous_non_empty_halves():
  docs, _, _ = unique_docs([[30, 30]] * 40)
  pairs = pairs_of(docs, max_seq_length=23, dupe_factor=5)  # max_num_tokens 20, every pair is cut
  offsets = set()
  for r in range(len(pairs)):
    a, b = split(pairs, r)
    assert len(a) + len(b) == 20 and len(a) == len(b) == 10 and contiguous(a) and contiguous(b)
    offsets.add(int(a[0] - FIRST) % 30)
  assert len(offsets) > 5  # cut at the front and at the back


def test_without_next_sentence_prediction_a_is_the_whole_chunk():
  docs, _, _ = unique_docs([[1] * n for n in (23, 40, 7)] + [[30]])
  pairs = pairs_of(docs, max_seq_length=12, short_seq_prob=0.0, dupe_factor=2, random_next_sentence=False)
  assert (pairs.next_sentence_labels == 0).all() and (pairs.segment_ids == 0).all()
  n = pairs.input_mask.sum(1)
  assert (pairs.input_ids[np.arange(len(pairs)), n - 1] == SEP).all()
  for d, doc in enumerate(docs[:3]):
    rows = sorted(split(pairs, r)[0].tolist() for r in np.flatnonzero(pairs.document == d))
    expected = [list(range(int(doc[0][0]) + i, min(int(doc[-1][0]) + 1, int(doc[0][0]) + i + 10)))
                for i in range(0, len(doc), 10)]
    assert rows == sorted(expected * 2)
  long = [split(pairs, r)[0] for r in np.flatnonzero(pairs.document == 3)]
  assert all(len(a) == 10 and contiguous(a) for a in long)


def test_num_to_predict_formula():
  ref = lambda n, p, cap: min(cap, max(1, int(round(n * p))))  # noqa: E731
  for n in (3, 5, 10, 30, 50, 128, 200):
    for p in (0.01, 0.15, 0.3):
      assert num_to_predict(n, p, 20) == ref(n, p, 20)
  assert num_to_predict(30, 0.15, 20) == 4  # round(4.5) == 4: half to even
  assert num_to_predict(10, 0.15, 20) == 2 and num_to_predict(50, 0.15, 20) == 8
  assert num_to_predict(10, 0.01, 20) == 1 and num_to_predict(200, 0.15, 20) == 20


def sequence(n: int) -> np.ndarray:
  """[CLS] n-3 text tokens [SEP] one more [SEP]."""
  ids = np.arange(FIRST, FIRST + n, dtype=np.int32)
  ids[0], ids[n - 3], ids[n - 1] = CLS, SEP, SEP
  return ids


def mask(ids, rng, cont=None, wwm=False, prob=0.15, p=20, **kw):
  return mask_tokens(ids, cont, rng, masked_lm_prob=prob, max_predictions_per_seq=p,
                     vocab_size=1000, mask_id=MASK, special_mask=(ids == CLS) | (ids == SEP),
                     whole_word_mask=wwm, **kw)


def test_mask_counts_specials_sorting_and_padding():
  rng = np.random.default_rng(0)
  for n in (5, 10, 30, 50, 128):
    out = mask(sequence(n), rng, p=40)
    k = num_to_predict(n, 0.15, 40)
    w = out.masked_lm_weights
    assert w.tolist() == [1.0] * k + [0.0] * (40 - k)
    pos = out.masked_lm_positions[:k]
    assert (np.diff(pos) > 0).all() and (out.masked_lm_positions[k:] == 0).all()
    assert (out.masked_lm_ids[:k] == sequence(n)[pos]).all() and (out.masked_lm_ids[k:] == 0).all()
  ids = np.zeros((2, 24), np.int32)
  ids[0, :20], ids[1, :8] = sequence(20), sequence(8)
  out = mask(ids, rng, prob=1.0, p=24, input_mask=ids != PAD)
  for r, n in ((0, 20), (1, 8)):  # everything but [CLS]/[SEP]/padding is masked
    cand = [i for i in range(n) if ids[r, i] not in (CLS, SEP)]
    assert out.masked_lm_positions[r, :len(cand)].tolist() == cand
    assert out.masked_lm_weights[r].sum() == len(cand)
    assert (out.input_ids[r, n:] == PAD).all() and set(out.input_ids[r, [0, n - 1]]) == {CLS, SEP}


def test_whole_word_groups():
  rng = np.random.default_rng(1)
  ids = np.array([CLS, 20, 21, 22, 30, 31, SEP], np.int32)
  cont = np.array([0, 0, 1, 1, 0, 0, 0], bool)
  for _ in range(30):  # k = round(7 × 0.3) = 2: the 3-piece word never fits, the two singles always
    assert mask(ids, rng, cont, wwm=True, prob=0.3).masked_lm_positions[:3].tolist() == [4, 5, 0]
  assert {tuple(mask(ids, rng, prob=0.3).masked_lm_positions[:2]) for _ in range(60)} > {(2, 3)}
  word = np.array([CLS, 20, 21, 22, SEP], np.int32)  # k = 2 < 3: nothing at all
  assert mask(word, rng, np.array([0, 0, 1, 1, 0], bool), wwm=True, prob=0.4).masked_lm_weights.sum() == 0
  across = np.array([CLS, 20, SEP, 21, SEP], np.int32)  # '##' after [SEP] joins the word before it
  cont = np.array([0, 0, 0, 1, 0], bool)
  assert all(mask(across, rng, cont, wwm=True).masked_lm_weights.sum() == 0 for _ in range(20))
  assert all(mask(across, rng, cont, wwm=False).masked_lm_weights.sum() == 1 for _ in range(20))
  first = np.array([CLS, 20, 21, SEP], np.int32)  # a leading '##' piece is a word of its own
  seen = {int(mask(first, rng, np.array([0, 1, 0, 0], bool), wwm=True).masked_lm_positions[0])
          for _ in range(40)}
  assert seen == {1, 2}
  with pytest.raises(InputError, match="is_continuation"):
    mask(first, rng, None, wwm=True)
  with pytest.raises(InputError, match="special_mask"):
    mask_tokens(first, None, rng, masked_lm_prob=0.15, max_predictions_per_seq=2, vocab_size=100,
                mask_id=MASK, special_mask=np.zeros(3, bool), whole_word_mask=False)


def small_corpus(n_docs=100, seed=0):
  rng = np.random.default_rng(seed)
  return [[rng.integers(1000, 30522, rng.integers(5, 41)).astype(np.int32)
           for _ in range(rng.integers(30, 80))] for _ in range(n_docs)]


CONT = np.arange(30522) >= 26000  # ids from 26000 on are '##' pieces


def instances_of(docs, num_workers=1, **config):
  return create_instances(docs, InstanceConfig(**config), vocab_size=30522, cls_id=CLS, sep_id=SEP,
                          mask_id=MASK, continuation=CONT, num_workers=num_workers)


def same(x, y) -> bool:
  return all(np.array_equal(getattr(x, k), getattr(y, k)) for k in vars(x))


def test_deterministic_for_a_seed_and_independent_of_workers_and_chunks(monkeypatch):
  docs = small_corpus(150)
  one = instances_of(docs, dupe_factor=2, whole_word_mask=True)
  assert same(one, instances_of(docs, dupe_factor=2, whole_word_mask=True))
  assert (one.document[1:] == one.document[:-1]).mean() < 0.05  # the final list is shuffled
  assert not same(one, instances_of(docs, dupe_factor=2, whole_word_mask=True, seed=7))
  assert same(one, instances_of(docs, num_workers=2, dupe_factor=2, whole_word_mask=True))
  monkeypatch.setattr(inst, "_CHUNK_DOCS", 7)
  assert same(one, instances_of(docs, num_workers=2, dupe_factor=2, whole_word_mask=True))
  pairs = create_pairs(docs, InstanceConfig(dupe_factor=2, whole_word_mask=True), vocab_size=30522,
                       cls_id=CLS, sep_id=SEP)  # the same rows, unmasked
  kept = np.ones(pairs.input_ids.shape, bool)
  r, c = np.nonzero(one.masked_lm_weights)
  kept[r, one.masked_lm_positions[r, c]] = False
  assert (pairs.input_ids[kept] == one.input_ids[kept]).all()
  assert (pairs.input_ids[r, one.masked_lm_positions[r, c]] == one.masked_lm_ids[r, c]).all()
  again = mask_pairs(pairs, np.random.default_rng(0), masked_lm_prob=0.3, max_predictions_per_seq=40,
                     vocab_size=30522, cls_id=CLS, sep_id=SEP, mask_id=MASK)
  assert (again.masked_lm_weights.sum(1) == num_to_predict(pairs.input_mask.sum(1), 0.3, 40)).all()


@pytest.fixture(scope="module")
def stats():
  return instances_of(small_corpus(600, seed=1), dupe_factor=6)


def test_layout_of_every_instance(stats):
  n, la = stats.input_mask.sum(1), (stats.segment_ids == 0).sum(1) - (128 - stats.input_mask.sum(1)) - 2
  rows, j = np.arange(len(stats)), np.arange(128)[None, :]
  assert len(stats) > 45_000 and (n <= 128).all() and (la >= 1).all() and (n - la - 3 >= 1).all()
  assert (stats.input_ids[:, 0] == CLS).all() and (stats.input_ids[rows, la + 1] == SEP).all()
  assert (stats.input_ids[rows, n - 1] == SEP).all() and (stats.input_ids[j >= n[:, None]] == PAD).all()
  assert (stats.input_mask == (j < n[:, None])).all()
  assert (stats.segment_ids == ((j >= (la + 2)[:, None]) & (j < n[:, None]))).all()
  k = num_to_predict(n, 0.15, 20)  # enough candidates always: exactly num_to_predict masked
  slots = np.arange(20)[None, :] < k[:, None]
  assert (stats.masked_lm_weights == slots).all() and stats.masked_lm_weights.dtype == np.float32
  assert all(getattr(stats, k).dtype == np.int32 for k in vars(stats) if k != "masked_lm_weights")
  assert (stats.masked_lm_positions[~slots] == 0).all() and (stats.masked_lm_ids[~slots] == 0).all()
  pos = np.where(slots, stats.masked_lm_positions, 10_000)
  assert (np.diff(pos, axis=1)[slots[:, 1:]] > 0).all()  # sorted
  p = stats.masked_lm_positions
  special = (p == 0) | (p == (la + 1)[:, None]) | (p >= (n - 1)[:, None])  # [CLS], [SEP] or padding
  assert not (special & slots).any() and not np.isin(stats.masked_lm_ids[slots], [CLS, SEP]).any()


def test_statistics_of_masking_and_next_sentences(stats):
  w = stats.masked_lm_weights > 0
  n = stats.input_mask.sum(1)
  fraction = w.sum() / (n - 3).sum()
  assert fraction == num_to_predict(n, 0.15, 20).sum() / (n - 3).sum() and 0.145 < fraction < 0.16
  now = np.take_along_axis(stats.input_ids, stats.masked_lm_positions, 1)[w]
  original = stats.masked_lm_ids[w]
  masked, kept = now == MASK, now == original
  rand = ~masked & ~kept
  assert abs(masked.mean() - 0.8) < 0.005 and abs(kept.mean() - 0.1) < 0.003
  assert abs(rand.mean() - 0.1) < 0.003
  assert abs((now[rand] < 1000).mean() - 1000 / 30522) < 0.005  # uniform over the whole vocabulary
  where = stats.masked_lm_positions / (n - 1)[:, None]  # uniform over the candidates
  assert abs(where[w].mean() - 0.5) < 0.01 and abs((where[w] < 0.25).mean() - 0.25) < 0.01
  # 0.5 plus half the one-segment chunks (random by force): at document ends, under short targets
  assert 0.5 < stats.next_sentence_labels.mean() < 0.56


def test_whole_words_are_masked_together():
  out = instances_of(small_corpus(300, seed=2), dupe_factor=3, whole_word_mask=True)
  ids = out.input_ids.copy()
  rows, slots = np.nonzero(out.masked_lm_weights)
  ids[rows, out.masked_lm_positions[rows, slots]] = out.masked_lm_ids[rows, slots]  # unmasked
  chosen = np.zeros(ids.shape, bool)
  chosen[rows, out.masked_lm_positions[rows, slots]] = True
  cand = (out.input_mask > 0) & (ids != CLS) & (ids != SEP)
  joins = cand & CONT[ids] & ((np.cumsum(cand, 1) - cand) > 0)
  prev = np.maximum.accumulate(np.where(cand, np.arange(128), -1), axis=1)  # previous candidate
  prev = np.concatenate([np.full((len(ids), 1), -1), prev[:, :-1]], 1)
  r, c = np.nonzero(joins)
  assert len(r) > 10_000 and chosen[r, c].sum() > 500
  assert (chosen[r, c] == chosen[r, prev[r, c]]).all()
  count, k = out.masked_lm_weights.sum(1), num_to_predict(out.input_mask.sum(1), 0.15, 20)
  assert (count <= k).all() and count.sum() > 0.97 * k.sum()


def test_short_target_lengths():
  """One-token segments: a document's longest pair is its target; short in 10% of documents."""
  docs, _, _ = unique_docs([[1] * 150] * 3000)
  pairs = pairs_of(docs, vocab=10**6, max_seq_length=64, dupe_factor=1)  # max_num_tokens 61
  longest = np.zeros(3000, int)
  np.maximum.at(longest, pairs.document, pairs.input_mask.sum(1) - 3)
  short = longest[longest < 61]
  assert longest.max() == 61 and abs(len(short) / 3000 - 0.1 * 59 / 60) < 0.017
  assert abs(short.mean() - 31) < 3.5
  pairs = pairs_of(docs[:1500], vocab=10**6, max_seq_length=64, dupe_factor=1, short_seq_prob=1.0)
  np.maximum.at(targets := np.zeros(1500, int), pairs.document, pairs.input_mask.sum(1) - 3)
  assert targets.min() == 2 and targets.max() == 61 and abs(targets.mean() - 31.5) < 1.5  # randint(2, 61)


def test_mask_tokens_with_one_generator_per_row_ignores_the_rest_of_the_batch():
  rng = np.random.RandomState(0)
  batch = rng.randint(10, 100, size=(6, 40)).astype(np.int32)
  batch[:, 0], batch[:, -1] = CLS, SEP
  kwargs = dict(masked_lm_prob=0.15, max_predictions_per_seq=8, vocab_size=100, mask_id=MASK,
                whole_word_mask=False)
  special = (batch == CLS) | (batch == SEP)
  whole = mask_tokens(batch, None, [np.random.default_rng([7, i]) for i in range(6)], special_mask=special, **kwargs)
  for i in (0, 4):  # row i alone, with its own generator: identical to its row in the batch
    alone = mask_tokens(batch[i], None, [np.random.default_rng([7, i])][0], special_mask=special[i], **kwargs)
    np.testing.assert_array_equal(alone.input_ids, whole.input_ids[i])
    np.testing.assert_array_equal(alone.masked_lm_positions, whole.masked_lm_positions[i])
  shared = mask_tokens(batch, None, np.random.default_rng(7), special_mask=special, **kwargs)
  assert not np.array_equal(shared.masked_lm_positions, whole.masked_lm_positions)
  with pytest.raises(InputError, match="one generator per row"):
    mask_tokens(batch, None, [np.random.default_rng(0)], special_mask=special, **kwargs)
