"""flaxbert.finetune.tasks.squad / squad_post: reading SQuAD v1.1/v2.0 JSON, doc-stride features, span
logits back to the context's own text, the official EM/F1 (v1.1 and v2.0), predictions.json."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from flaxbert.errors import InputError
from flaxbert.finetune.tasks.readers import ReadReport
from flaxbert.finetune.tasks.squad import featurize, read_squad
from flaxbert.finetune.tasks.squad_post import (exact_match_score, f1_score, get_final_text, normalize_answer,
                                                predict_answers, squad_scores, write_predictions_json)
from flaxbert.text.tokenization import SPECIAL_TOKENS, WordPieceTokenizer
from flaxbert.text.wordpiece_rules import basic_tokenize

SUPER_BOWL = ("Super Bowl 50 was an American football game to determine the champion of the National "
              "Football League (NFL) for the 2015 season. The American Football Conference (AFC) champion "
              "Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers "
              "24–10 to earn their third Super Bowl title.")
FILLER = ["river", "mill", "stone", "water", "green", "field", "road", "tree"]
RIVER_WORDS = [FILLER[i % len(FILLER)] for i in range(40)]
RIVER_WORDS[20:22] = ["Zebra", "Bridge"]
RIVER = " ".join(RIVER_WORDS)


def qa(qid: str, question: str, context: str, *answers: str, start: int | None = None, **extra) -> dict:
  """A question whose answers sit at their first occurrence in `context` (or at `start`)."""
  found = [{"text": a, "answer_start": context.index(a) if start is None else start} for a in answers]
  return {"id": qid, "question": question, "answers": found, **extra}


def squad_json(tmp_path: Path, articles: list[tuple[str, str, list[dict]]], name: str) -> Path:
  data = {"version": "test", "data": [{"title": title, "paragraphs": [{"context": context, "qas": qas}]}
                                      for title, context, qas in articles]}
  path = tmp_path / name
  path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
  return path


def v1_file(tmp_path: Path) -> Path:
  return squad_json(tmp_path, [
      ("Super_Bowl_50", SUPER_BOWL, [
          qa("sb1", "Which NFL team won Super Bowl 50?", SUPER_BOWL, "Denver Broncos", "Broncos"),
          qa("sb2", "What was the final score?", SUPER_BOWL, "24–10"),
          qa("sb3", "Which conference did the Broncos represent?", SUPER_BOWL, "AFC"),
          qa("sb_bad", "Who lost?", SUPER_BOWL, "Carolina Panthers", start=0),  # points at "Super Bowl"
      ]),
      ("River", RIVER, [qa("river1", "Which bridge?", RIVER, "Zebra Bridge")]),
  ], "v1.json")


def v2_file(tmp_path: Path) -> Path:
  return squad_json(tmp_path, [
      ("Super_Bowl_50", SUPER_BOWL, [
          qa("has", "Which NFL team won Super Bowl 50?", SUPER_BOWL, "Denver Broncos", is_impossible=False),
          qa("no", "Which team lost Super Bowl 49?", SUPER_BOWL, is_impossible=True,
             plausible_answers=[{"text": "Carolina Panthers", "answer_start": SUPER_BOWL.index("Carolina")}]),
      ]),
      ("River", RIVER, [qa("river1", "Which bridge?", RIVER, "Zebra Bridge", is_impossible=False)]),
  ], "v2.json")


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
  """Every word of the data, except that "broncos" is only "bron" + "##cos" (a wordpiece split)."""
  texts = [SUPER_BOWL, RIVER, "Which NFL team won Super Bowl 50? What was the final score? Which "
           "conference did the Broncos represent? Who lost? Which bridge? Which team lost Super Bowl 49?"]
  words = sorted({w for t in texts for w in basic_tokenize(t, True)} - {"broncos"})
  return WordPieceTokenizer(list(SPECIAL_TOKENS) + words + ["bron", "##cos"])


def by_id(examples) -> dict:
  return {ex.qid: ex for ex in examples}


# --- reading --------------------------------------------------------------------------------------


def test_read_maps_answers_to_words_and_skips_answers_not_in_the_context(tmp_path, caplog):
  path = v1_file(tmp_path)
  evaluation = by_id(read_squad(path, "v1", training=False))
  assert list(evaluation) == ["sb1", "sb2", "sb3", "sb_bad", "river1"]
  sb1 = evaluation["sb1"]
  assert sb1.doc_tokens == tuple(SUPER_BOWL.split()) and sb1.title == "Super_Bowl_50"
  assert [text for text, _ in sb1.answers] == ["Denver Broncos", "Broncos"]  # all golds for eval
  assert sb1.start_word == -1 and not sb1.is_impossible

  report = ReadReport("squad")
  with caplog.at_level(logging.WARNING, logger="flaxbert"):
    training = by_id(read_squad(path, "v1.1", training=True, report=report))
  assert report.skipped == 1 and report.skipped_ids == ["sb_bad"] and "sb_bad" not in training
  assert "skipped 1 questions whose answer is not in the context" in caplog.text
  sb1 = training["sb1"]
  assert sb1.doc_tokens[sb1.start_word:sb1.end_word + 1] == ("Denver", "Broncos")
  sb3 = training["sb3"]
  assert sb3.start_word == sb3.end_word and sb3.doc_tokens[sb3.start_word] == "(AFC)"
  assert training["sb2"].doc_tokens[training["sb2"].start_word] == "24–10"
  river = training["river1"]
  assert (river.start_word, river.end_word) == (20, 21)


def test_read_errors_name_the_file_and_the_question(tmp_path):
  bad = tmp_path / "broken.json"
  bad.write_text('{"data": [', encoding="utf-8")
  with pytest.raises(InputError, match="broken.json: invalid JSON"):
    read_squad(bad, "v1", training=False)
  no_question = squad_json(tmp_path, [("Art", "Some text.", [{"id": "q7", "answers": []}])], "nq.json")
  with pytest.raises(InputError, match=r"nq.json: article 'Art', question id 'q7': missing \"question\""):
    read_squad(no_question, "v1", training=False)
  no_context = tmp_path / "nc.json"
  no_context.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}))
  with pytest.raises(InputError, match=r"nc.json: article 'T', paragraph 0: missing \"context\""):
    read_squad(no_context, "v1", training=False)
  impossible = squad_json(tmp_path, [("Art", "Some text.", [
      qa("q1", "What?", "Some text.", "text", is_impossible=True)])], "imp.json")
  with pytest.raises(InputError, match="question id 'q1': is_impossible is true but it has 1 answer"):
    read_squad(impossible, "v2", training=True)
  twice = squad_json(tmp_path, [("A", "x y", [qa("q", "?", "x y", "x")]), ("B", "x y", [qa("q", "?", "x y", "y")])],
                     "dup.json")
  with pytest.raises(InputError, match="article 'B', question id 'q': the id is used twice"):
    read_squad(twice, "v1", training=False)
  with pytest.raises(InputError, match="SQuAD version 'v3'"):
    read_squad(twice, "v3", training=False)


# --- features -------------------------------------------------------------------------------------


def test_featurize_one_window_with_the_answer_span(tmp_path, tok):
  examples = read_squad(v1_file(tmp_path), "v1", training=True)
  features = featurize(examples[:3], tok, max_seq_length=128, training=True)
  assert len(features) == 3 and features.example_index.tolist() == [0, 1, 2]
  for array in (features.input_ids, features.segment_ids, features.input_mask):
    assert array.dtype == np.int32 and array.shape == (3, 128)
  tokens = features.tokens[0]
  query = tok.tokenize("Which NFL team won Super Bowl 50?")
  assert tokens[:len(query) + 2] == ["[CLS]"] + query + ["[SEP]"] and tokens[-1] == "[SEP]"
  n = len(tokens)
  assert features.input_ids[0, :n].tolist() == tok.convert_tokens_to_ids(tokens)
  assert features.input_ids[0, n:].tolist() == [0] * (128 - n)
  assert features.input_mask[0].tolist() == [1] * n + [0] * (128 - n)
  assert features.segment_ids[0].tolist() == [0] * (len(query) + 2) + [1] * (n - len(query) - 2) + [0] * (128 - n)
  start, end = features.start_positions[0], features.end_positions[0]
  assert tokens[start:end + 1] == ["denver", "bron", "##cos"]
  assert features.token_to_orig_map[0][start] == examples[0].start_word
  # _improve_answer_span: the word is "(AFC)", the answer only its "afc" piece.
  start, end = features.start_positions[2], features.end_positions[2]
  assert start == end and features.tokens[2][start] == "afc"
  assert features.tokens[1][features.start_positions[1]:features.end_positions[1] + 1] == ["24", "–", "10"]


def test_doc_stride_windows_positions_and_max_context(tmp_path, tok):
  river = [ex for ex in read_squad(v1_file(tmp_path), "v1", training=True) if ex.qid == "river1"]
  # Query "which bridge ?" is 3 pieces: 24 - 3 - 3 = 18 doc pieces a window, starting every 8.
  features = featurize(river, tok, max_seq_length=24, doc_stride=8, training=True)
  assert len(features) == 4  # windows over pieces 0-17, 8-25, 16-33, 24-39
  assert features.example_index.tolist() == [0, 0, 0, 0]
  offset = 5  # [CLS] which bridge ? [SEP]
  assert features.start_positions.tolist() == [0, 20 - 8 + offset, 20 - 16 + offset, 0]
  assert features.end_positions.tolist() == [0, 21 - 8 + offset, 21 - 16 + offset, 0]
  assert features.tokens[1][17:19] == ["zebra", "bridge"] and features.tokens[2][9:11] == ["zebra", "bridge"]
  assert features.token_to_orig_map[1][17] == 20 and features.token_to_orig_map[3][offset] == 24
  assert features.input_mask[3].sum() == offset + 16 + 1
  # Piece 20: window 1 has 12 left / 5 right, window 2 has 4 left / 13 right -> window 1.
  assert features.token_is_max_context[1][17] and not features.token_is_max_context[2][9]
  # Piece 16 is in windows 0, 1, 2 (min context 1, 8, 0) -> window 1 only.
  assert [features.token_is_max_context[w][offset + 16 - s] for w, s in ((0, 0), (1, 8), (2, 16))] == [
      False, True, False]
  # Piece 25: last of window 1 (0 right), in window 2 with 9 left / 8 right -> window 2.
  assert not features.token_is_max_context[1][offset + 17] and features.token_is_max_context[2][offset + 9]

  with pytest.raises(InputError, match=r"question id 'river1' .*expected max_seq_length >= 7"):
    featurize(river, tok, max_seq_length=6, training=True)


# --- predictions ----------------------------------------------------------------------------------


def logits_for(features, spans: dict[int, tuple[int, int, float]], base: float = -5.0):
  """Start/end logits: `base` everywhere, `value` at (start, end) of the features named in spans."""
  start = np.full(features.input_ids.shape, base, np.float32)
  end = start.copy()
  for f, (s, e, value) in spans.items():
    start[f, s], end[f, e] = value, value
  return start, end


def test_predictions_recover_the_original_context_text(tmp_path, tok):
  examples = read_squad(v1_file(tmp_path), "v1", training=False)[:3]
  features = featurize(examples, tok, max_seq_length=128, training=False)
  assert features.start_positions.tolist() == [0, 0, 0]
  t = features.tokens
  spans = {0: (t[0].index("denver"), t[0].index("##cos"), 8.0),
           1: (t[1].index("24"), t[1].index("10"), 8.0),
           2: (t[2].index("afc"), t[2].index("afc"), 8.0)}
  predictions, nbest, null_odds = predict_answers(examples, features, *logits_for(features, spans))
  assert predictions == {"sb1": "Denver Broncos", "sb2": "24–10", "sb3": "AFC"}
  assert null_odds == {}
  best = nbest["sb1"]
  assert best[0] == {"text": "Denver Broncos", "probability": pytest.approx(best[0]["probability"]),
                     "start_logit": 8.0, "end_logit": 8.0, "span": best[0]["span"]}
  start, end = best[0]["span"]  # where the answer stands in the context
  assert examples[0].context[start:end] == "Denver Broncos"
  assert len(best) == 20 and len({b["text"] for b in best}) == 20  # deduplicated final texts
  assert sum(b["probability"] for b in best) == pytest.approx(1.0)
  assert [b["probability"] for b in best] == sorted((b["probability"] for b in best), reverse=True)

  # A span running to the end of the sentence keeps the context's own punctuation and casing.
  title = t[0].index("title")
  predictions, _, _ = predict_answers(examples[:1], features, *logits_for(features, {0: (title - 2, title + 1, 8.0)}))
  assert predictions == {"sb1": "Super Bowl title."}
  assert get_final_text("steve smith", "Steve Smith's", True) == "Steve Smith"
  assert get_final_text("xyz", "Steve Smith's", True) == "Steve Smith's"  # not found: the whole words


def test_max_answer_length_and_max_context_across_windows(tmp_path, tok):
  examples = read_squad(v1_file(tmp_path), "v1", training=False)[:1]
  features = featurize(examples, tok, max_seq_length=128, training=False)
  t = features.tokens[0]
  first, last = t.index("national"), t.index("title")
  start, end = logits_for(features, {0: (first, last, 9.0)})
  context_start = min(features.token_to_orig_map[0])
  start[0, context_start], end[0, context_start + 2] = 8.0, 8.0  # "Super Bowl 50", before the long span
  assert last - first + 1 == 43
  assert predict_answers(examples, features, start, end)[0] == {"sb1": "Super Bowl 50"}
  long = predict_answers(examples, features, start, end, max_answer_length=43)[0]["sb1"]
  assert long.startswith("National Football League (NFL) for") and long.endswith("Super Bowl title")

  river = read_squad(v1_file(tmp_path), "v1", training=False)[4:]
  features = featurize(river, tok, max_seq_length=24, doc_stride=8, training=False)
  # Window 2 scores the answer higher, but its start is not at its max context; window 1's counts.
  start, end = logits_for(features, {1: (17, 18, 3.0), 2: (9, 10, 9.0)})
  predictions, nbest, _ = predict_answers(river, features, start, end)
  assert predictions == {"river1": "Zebra Bridge"}
  assert (nbest["river1"][0]["start_logit"], nbest["river1"][0]["end_logit"]) == (3.0, 3.0)


def test_v2_impossible_questions_and_the_null_threshold(tmp_path, tok):
  train = read_squad(v2_file(tmp_path), "v2", training=True)
  assert [ex.is_impossible for ex in train] == [False, True, False]
  features = featurize(train, tok, max_seq_length=128, training=True)
  assert features.tokens[0][features.start_positions[0]:features.end_positions[0] + 1] == ["denver", "bron", "##cos"]
  assert (features.start_positions[1], features.end_positions[1]) == (0, 0)

  examples = read_squad(v2_file(tmp_path), "v2.0", training=False)[:2]
  features = featurize(examples, tok, max_seq_length=128, training=False)
  t = features.tokens
  start, end = logits_for(features, {0: (t[0].index("denver"), t[0].index("##cos"), 3.0),
                                     1: (t[1].index("carolina"), t[1].index("panthers"), 1.0)})
  start[:, 0] = end[:, 0] = [2.0, 5.0]  # null scores 4 and 10
  predictions, nbest, null_odds = predict_answers(examples, features, start, end, version="v2")
  assert null_odds == {"has": pytest.approx(4.0 - 6.0), "no": pytest.approx(10.0 - 2.0)}
  assert predictions == {"has": "Denver Broncos", "no": ""}
  assert nbest["no"][0]["text"] == "" and "" in [b["text"] for b in nbest["has"]]
  predictions, _, _ = predict_answers(examples, features, start, end, version="v2", null_score_diff_threshold=-3.0)
  assert predictions == {"has": "", "no": ""}
  predictions, _, _ = predict_answers(examples, features, start, end, version="v2", null_score_diff_threshold=9.0)
  assert predictions == {"has": "Denver Broncos", "no": "Carolina Panthers"}


# --- official scores ------------------------------------------------------------------------------


def test_official_v1_scores(tmp_path, caplog):
  assert normalize_answer("The  Denver Broncos!") == "denver broncos"
  assert exact_match_score("the Denver Broncos", "Denver Broncos")
  assert f1_score("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
  assert f1_score("", "Denver Broncos") == 0.0
  examples = read_squad(v1_file(tmp_path), "v1", training=False)
  predictions = {"sb1": "the Denver Broncos", "sb2": "24–10", "sb3": "AFC champion", "sb_bad": "Broncos"}
  with caplog.at_level(logging.WARNING, logger="flaxbert"):
    scores = squad_scores(predictions, examples)
  assert "1 unanswered question(s) will receive score 0: river1" in caplog.text
  # sb1 1/1; sb2 1/1; sb3 0/(2/3); sb_bad (gold "Carolina Panthers") 0/0; river1 missing 0/0.
  assert scores == {"exact_match": pytest.approx(40.0), "f1": pytest.approx(100 * (2 + 2 / 3) / 5)}
  assert squad_scores({"sb1": "Broncos"}, examples[:1])["exact_match"] == 100.0  # max over golds
  assert squad_scores({"sb1": "Denver"}, examples[:1])["f1"] == pytest.approx(200 / 3)


def test_official_v2_scores_and_best_threshold(tmp_path):
  examples = read_squad(v2_file(tmp_path), "v2", training=False)[:2]  # "has" (Denver Broncos), "no"
  scores = squad_scores({"has": "Denver Broncos", "no": ""}, examples, version="v2")
  assert scores == {"exact_match": 100.0, "f1": 100.0, "total": 2, "HasAns_exact": 100.0, "HasAns_f1": 100.0,
                    "HasAns_total": 1, "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 1}
  scores = squad_scores({"has": "", "no": ""}, examples, version="v2")
  assert (scores["exact_match"], scores["HasAns_f1"], scores["NoAns_exact"]) == (50.0, 0.0, 100.0)
  # With null odds: "no" (odds 2.0 > na_prob_thresh 1.0) counts as answered "no answer".
  predictions, odds = {"has": "Broncos", "no": "something"}, {"has": -1.0, "no": 2.0}
  scores = squad_scores(predictions, examples, version="v2", null_odds=odds)
  assert scores["exact_match"] == pytest.approx(50.0) and scores["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
  assert scores["best_exact"] == pytest.approx(50.0) and scores["best_exact_thresh"] == 0.0
  assert scores["best_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2) and scores["best_f1_thresh"] == -1.0
  with pytest.raises(InputError, match="no gold answer"):
    squad_scores({}, examples[1:], version="v1")


def test_task_scores_are_those_of_its_predictions_file(tmp_path):
  """A threshold above 1 answers "has" at odds 2.0; the task must not count that as no-answer."""
  from flaxbert.finetune.tasks.qa import QuestionAnswering  # pylint: disable=import-outside-toplevel
  examples = read_squad(v2_file(tmp_path), "v2", training=False)[:2]  # "has" (Denver Broncos), "no"
  task = QuestionAnswering.__new__(QuestionAnswering)
  task.version = "v2"
  predictions = {"has": "Denver Broncos", "no": ""}
  scores = task.score(examples, None, None, {"predictions": predictions, "null_odds": {"has": 2.0, "no": 5.0}})
  alone = squad_scores(predictions, examples, version="v2")
  assert scores["exact_match"] == alone["exact_match"] == 100.0 and scores["f1"] == alone["f1"] == 100.0
  assert scores["HasAns_exact"] == 100.0 and scores["best_exact"] == 100.0


def test_predictions_json_is_official_and_atomic(tmp_path):
  path = tmp_path / "out" / "predictions.json"
  assert write_predictions_json(path, {"sb1": "Denver Broncos", "sb2": "24–10"}) == path
  assert json.loads(path.read_text(encoding="utf-8")) == {"sb1": "Denver Broncos", "sb2": "24–10"}
  with pytest.raises(TypeError):
    write_predictions_json(path, {"sb1": object()})  # a failed write leaves the old file whole
  assert json.loads(path.read_text(encoding="utf-8")) == {"sb1": "Denver Broncos", "sb2": "24–10"}
  write_predictions_json(path, {"q": ""})
  assert json.loads(path.read_text(encoding="utf-8")) == {"q": ""}
  assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.json"]  # no temporary left
