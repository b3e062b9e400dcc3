"""flaxbert.finetune.tasks.summarization: the JSONL reader, the greedy oracle, ROUGE, BertSumExt
features, trigram-blocked selection, Lead-k and centroid ranking, on hand-made data."""
import json

import numpy as np
import pytest

from flaxbert.errors import InputError
from flaxbert.finetune.tasks import readers, scores, summarization as S
from flaxbert.finetune.tasks.summarization import SummaryExample
from flaxbert.text.tokenization import WordPieceTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d", "e", "."]


def example(sentences, summary=None, guid="d") -> SummaryExample:
  return SummaryExample(guid, tuple(sentences), summary, f"{guid}.jsonl:1")


# --- reading ---------------------------------------------------------------------------------------


def write_jsonl(tmp_path, rows, name="docs.jsonl") -> str:
  path = tmp_path / name
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
  return str(path)


def row(guid, split, article, summary="Body one.", duplicate_of=None) -> dict:
  return {"id": guid, "split": split, "duplicate_of": duplicate_of, "article": article, "summary": summary}


def test_read_summaries_split_duplicates_headline(tmp_path):
  path = write_jsonl(tmp_path, [
      row("b/1", "test", "Headline one\n\nBody one. Body two.\n\nBody three."),
      row("b/2", "train", "Headline two\n\nOther body."),
      "",
      row("b/3", "test", "Headline one\n\nBody one. Body two.\n\nBody three.", duplicate_of="b/1"),
      row("b/4", "test", "Only a headline\n\n", summary=None),
      row("b/5", "test", "Headline five\n\nFive.", summary=None),
  ])
  report = readers.ReadReport(path)
  got = S.read_summaries(path, "test", drop_headline=True, report=report)
  assert [e.guid for e in got] == ["b/1", "b/5"]
  assert got[0].sentences == ("Body one.", "Body two.", "Body three.")
  assert got[0].summary == "Body one." and got[0].source == f"{path}:1"
  assert got[1].summary is None and got[1].source == f"{path}:6"
  assert report.skipped == 2 and report.reasons == {"duplicate": 1, "empty document": 1}
  assert report.examples == 2

  with_headline = S.read_summaries(path, None, drop_headline=False, keep_duplicates=True)
  assert [e.guid for e in with_headline] == ["b/1", "b/2", "b/3", "b/4", "b/5"]
  assert with_headline[0].sentences[0] == "Headline one"


def test_read_summaries_custom_fields_and_guid(tmp_path):
  path = write_jsonl(tmp_path, [{"text": "One. Two.", "highlights": "One."}])
  got = S.read_summaries(path, article_field="text", summary_field="highlights", drop_headline=False)
  assert got == [SummaryExample("docs.jsonl-1", ("One.", "Two."), "One.", f"{path}:1")]


@pytest.mark.parametrize("rows, split, where, words", [
    ([row("1", "test", "H\n\nA."), '{"id": "2", "article": '], None, 2, "JSON object"),
    ([row("1", "test", "H\n\nA."), "[1, 2]"], None, 2, "JSON object"),
    ([row("1", "test", "H\n\nA."), {"id": "2", "summary": "A."}], None, 2, "'article'"),
    ([{"article": "H\n\nA."}], None, 1, "'summary'"),
    ([{"article": "H\n\nA.", "summary": 3}], None, 1, "'summary' to be a string (or null)"),
    ([{"article": ["A."], "summary": "A."}], None, 1, "'article' to be a string, got list"),
    ([row("1", "test", "H\n\nA."), {"article": "H\n\nA.", "summary": "A."}], "test", 2, "'split'"),
])
def test_read_summaries_errors_name_file_and_line(tmp_path, rows, split, where, words):
  path = write_jsonl(tmp_path, rows)
  with pytest.raises(InputError, match=f"{path}:{where}: expected") as info:
    S.read_summaries(path, split, drop_headline=True)
  assert words in str(info.value)


# --- oracle and ROUGE ------------------------------------------------------------------------------

DOCUMENT = ["The cat sat on the mat.", "Stocks fell sharply in London today.",
            "A dog barked at the mailman loudly.", "The weather was mild and dry."]


def test_greedy_oracle():
  assert S.greedy_oracle(DOCUMENT, DOCUMENT[0] + DOCUMENT[2], 3) == [0, 2]
  assert S.greedy_oracle(DOCUMENT, DOCUMENT[2] + " " + DOCUMENT[0], 3) == [0, 2]  # sorted
  assert S.greedy_oracle(DOCUMENT, DOCUMENT[0] + DOCUMENT[2], 1) == [2]  # the longer one scores higher
  assert S.greedy_oracle(DOCUMENT, DOCUMENT[1], 3) == [1]  # stops when nothing improves R1 + R2
  assert S.greedy_oracle(DOCUMENT, "Nothing here overlaps.", 3) == []
  assert S.greedy_oracle(DOCUMENT, "STOCKS FELL, sharply!", 3) == [1]  # lower-cased, punctuation dropped
  assert S.greedy_oracle([], "Anything.", 3) == []


def test_rouge_scores_hand_checked():
  assert scores.rouge_scores(["The cat sat."], ["The cat sat."]) == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
  # "the cat sat" vs "the cat sat on the mat": unigrams 3 of 3 predicted, 3 of 6 reference
  # (clipped counts) → F1 = 2·1·0.5/1.5 = 2/3; bigrams 2/2 and 2/5 → 4/7; LCS 3 → 2/3.
  got = scores.rouge_scores(["the cat sat"], ["The cat sat on the mat."])
  assert got["rouge1"] == pytest.approx(200 / 3) and got["rouge2"] == pytest.approx(400 / 7)
  assert got["rougeL"] == pytest.approx(200 / 3)
  mean = scores.rouge_scores(["the cat sat", "x"], ["The cat sat on the mat.", "x"])
  assert mean["rouge1"] == pytest.approx((200 / 3 + 100) / 2)
  assert scores.rouge_scores(["Running dogs."], ["run dog"])["rouge1"] == pytest.approx(100.0)  # stemmer on
  assert scores.rouge_scores([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
  # several references: the best F1 over them, per variant
  best = scores.rouge_scores(["the cat sat"], [["a dog ran", "The cat sat on the mat."]])
  assert best == got and scores.rouge_scores(["x"], [("y", "x")])["rouge2"] == 0.0
  with pytest.raises(ValueError, match="missing"):
    scores.rouge_scores(["x"], [[]])
  with pytest.raises(ValueError, match="2 predictions but 1 references"):
    scores.rouge_scores(["a", "b"], ["a"])


# --- features --------------------------------------------------------------------------------------


def tokenizer() -> WordPieceTokenizer:
  return WordPieceTokenizer(VOCAB, lower_case=True)


def test_featurize_layout_and_labels():
  docs = [example(["a b .", "c d e .", "a ."], summary="c d e."), example(["e ."], summary=None)]
  f = S.featurize(docs, tokenizer(), max_seq_length=16, max_sentences=4, oracle_sentences=3)
  cls, sep, a, b, c, d, e, dot = 2, 3, 5, 6, 7, 8, 9, 10
  assert f.input_ids.shape == f.segment_ids.shape == f.input_mask.shape == (2, 16)
  assert f.cls_positions.shape == f.sentence_mask.shape == f.sentence_labels.shape == (2, 4)
  assert f.input_ids.dtype == f.cls_positions.dtype == f.sentence_mask.dtype == np.int32
  assert f.sentence_labels.dtype == np.float32
  assert f.input_ids[0].tolist() == [cls, a, b, dot, sep, cls, c, d, e, dot, sep, cls, a, dot, sep, 0]
  assert f.segment_ids[0].tolist() == [0] * 5 + [1] * 6 + [0] * 4 + [0]
  assert f.input_mask[0].tolist() == [1] * 15 + [0]
  assert f.cls_positions.tolist() == [[0, 5, 11, 0], [0, 0, 0, 0]]
  assert f.sentence_ids[0].tolist() == [-1, 0, 0, 0, -1, -1, 1, 1, 1, 1, -1, -1, 2, 2, -1, -1]
  assert f.sentence_ids[1].tolist() == [-1, 0, 0, -1] + [-1] * 12
  assert f.sentence_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
  assert f.sentence_labels.tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]  # no reference: no labels
  assert f.num_sentences.tolist() == [3, 1] and len(f) == 2
  assert f.input_ids[1].tolist() == [cls, e, dot, sep] + [0] * 12


def test_featurize_drops_sentences_that_do_not_fit():
  doc = example(["a b .", "c d e .", "a ."], summary="a .")
  f = S.featurize([doc], tokenizer(), max_seq_length=13, max_sentences=4, oracle_sentences=3)
  assert f.num_sentences.tolist() == [2]  # 5 + 6 positions; the third needs 4 more: dropped whole
  assert f.input_mask[0].tolist() == [1] * 11 + [0] * 2 and f.input_ids[0, 11:].tolist() == [0, 0]
  assert f.sentence_mask[0].tolist() == [1, 1, 0, 0]
  assert f.sentence_labels[0].tolist() == [1, 0, 0, 0]  # the oracle sees only the encoded sentences
  f = S.featurize([doc], tokenizer(), max_seq_length=16, max_sentences=2, oracle_sentences=3)
  assert f.num_sentences.tolist() == [2] and f.cls_positions.tolist() == [[0, 5]]  # slots run out
  f = S.featurize([doc], tokenizer(), max_seq_length=16, max_sentences=3, oracle_sentences=3,
                  max_sentence_tokens=2)  # sentences cut to 2 pieces: "a b", "c d", "a ."
  assert f.input_ids[0, :12].tolist() == [2, 5, 6, 3, 2, 7, 8, 3, 2, 5, 10, 3]
  assert f.cls_positions.tolist() == [[0, 4, 8]] and f.segment_ids[0, :12].tolist() == [0] * 4 + [1] * 4 + [0] * 4
  f = S.featurize([example(["a b c d e a b c d e ."])], tokenizer(), max_seq_length=6, max_sentences=2,
                  oracle_sentences=1)  # a sentence longer than the sequence is cut to fit it
  assert f.input_ids[0].tolist() == [2, 5, 6, 7, 8, 3] and f.num_sentences.tolist() == [1]
  with pytest.raises(InputError, match="max_sentences >= 1"):
    S.featurize([doc], tokenizer(), max_seq_length=16, max_sentences=0, oracle_sentences=3)


# --- prediction ------------------------------------------------------------------------------------

NEWS = ["The bank raised rates today.", "The bank raised rates again on Friday.", "Markets fell.",
        "Shares rose sharply in Tokyo."]


def test_select_trigram_blocking_and_document_order():
  scores = np.array([0.9, 0.8, 0.1, 0.5])
  assert S.select(scores, NEWS, 3) == [0, 2, 3]  # 1 shares "the bank raised" with 0
  assert S.select(scores, NEWS, 3, block_trigrams=False) == [0, 1, 3]
  assert S.select(np.array([0.1, 0.9, 0.5, 0.2]), NEWS, 2) == [1, 2]  # document order, not score order
  assert S.select(np.array([0.1, -np.inf, 0.5, 0.2, 9.0, 9.0]), NEWS, 3, False) == [0, 2, 3]  # masked, padding
  assert S.select(np.array([0.5, 0.5, 0.5]), ["x y z", "p q r", "s t u"], 2) == [0, 1]  # ties: earlier first
  assert S.select(np.zeros(0), [], 3) == []


def test_summaries_from_scores_uses_encoded_sentences_only():
  docs = [example(["a b .", "c d e .", "a ."]), example(["e .", "d ."])]
  f = S.featurize(docs, tokenizer(), max_seq_length=12, max_sentences=3, oracle_sentences=3)
  assert f.num_sentences.tolist() == [2, 2]
  scores = np.array([[0.1, 0.9, 5.0], [0.7, 0.2, 5.0]], np.float32)
  assert S.summaries_from_scores(docs, f, scores, 1) == ["c d e .", "e ."]
  assert S.summaries_from_scores(docs, f, scores, 3) == ["a b . c d e .", "e . d ."]


def test_lead():
  docs = [example(["One.", "Two.", "Three.", "Four."]), example(["Only."])]
  assert S.lead(docs, 3) == ["One. Two. Three.", "Only."]
  assert S.lead(docs, 1) == ["One.", "Only."]


def test_rank_by_centroid():
  # unit vectors [1,0], [0,1], [.71,.71]; their mean points along [1,1] → cosines .71, .71, 1
  scores = S.rank_by_centroid(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
  np.testing.assert_allclose(scores, [np.sqrt(0.5), np.sqrt(0.5), 1.0], rtol=1e-6)
  scaled = S.rank_by_centroid(np.array([[10.0, 0.0], [0.0, 0.5], [3.0, 3.0]]))  # lengths do not matter
  np.testing.assert_allclose(scaled, scores, rtol=1e-6)
  outlier = S.rank_by_centroid(np.array([[1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [-1.0, 0.0]]))
  assert outlier.dtype == np.float32 and int(np.argmin(outlier)) == 3
  np.testing.assert_allclose(outlier, [np.sqrt(1 / 1.01), np.sqrt(1 / 1.01), 1.0, -1.0], rtol=1e-6)
  assert S.select(outlier, ["p q r", "s t u", "v w x", "y z a"], 2) == [0, 2]
  assert S.rank_by_centroid(np.zeros((0, 4))).shape == (0,)
  with pytest.raises(ValueError, match=r"\[S, D\]"):
    S.rank_by_centroid(np.zeros(3))
