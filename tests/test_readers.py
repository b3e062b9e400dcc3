"""flaxbert.finetune.tasks.readers: GLUE TSVs in their shipped layouts, custom tables, CoNLL files, file:line errors."""
import json

import pytest

from flaxbert.errors import InputError
from flaxbert.finetune.tasks import glue_tsv, readers
from flaxbert.finetune.tasks.readers import ReadReport, TaggedExample, TextExample


def write(tmp_path, name: str, lines, encoding: str = "utf-8") -> str:
  path = tmp_path / name
  path.write_text("".join(("\t".join(x) if isinstance(x, (list, tuple)) else x) + "\n" for x in lines),
                  encoding=encoding)
  return str(path)


MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
MNLI_ROW = ["7", "31193", "31193n", "government", "( ( Conceptually ...", "( ( ( Product ...",
            "(ROOT ...)", "(ROOT ...)", "Conceptually cream skimming.", "Product and geography."]
STSB_HEAD = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
STSB_ROW = ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.",
            "An air plane is taking off."]

# task → (train/dev lines, its first example (guid, text_a, text_b, label), test lines, its first example)
GLUE_FILES = {
    "cola": ([["gj04", "1", "", "Our friends won't buy this analysis."], ["gj04", "0", "*", "They drank the pub."]],
             ("train-1", "Our friends won't buy this analysis.", None, "1"),
             [["index", "sentence"], ["0", "Bill whistled past the house."]],
             ("0", "Bill whistled past the house.", None, None)),
    "sst2": ([["sentence", "label"], ['hide new secretions from the "parental" units ', "0"]],
             ("train-2", 'hide new secretions from the "parental" units ', None, "0"),
             [["index", "sentence"], ["0", "uneasy mishmash"]], ("0", "uneasy mishmash", None, None)),
    "mrpc": ([["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
              ["1", "702876", "702977", 'Amrozi accused his brother "the witness".', "Referring to him."]],
             ("train-2", 'Amrozi accused his brother "the witness".', "Referring to him.", "1"),
             [["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["0", "1089874", "1089925", "PCCW 's", "Mr"]],
             ("0", "PCCW 's", "Mr", None)),
    "stsb": ([STSB_HEAD + ["score"], STSB_ROW + ["5.000"]],
             ("0", "A plane is taking off.", "An air plane is taking off.", 5.0),
             [STSB_HEAD, STSB_ROW], ("0", "A plane is taking off.", "An air plane is taking off.", None)),
    "qqp": ([["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
             ["133273", "213221", "213222", "How is the life?", "How is life?", "0"]],
            ("133273", "How is the life?", "How is life?", "0"),
            [["id", "question1", "question2"], ["0", "Why do rockets look white?", "Why are rockets white?"]],
            ("0", "Why do rockets look white?", "Why are rockets white?", None)),
    "mnli": ([MNLI_HEAD + ["label1", "gold_label"], MNLI_ROW + ["neutral", "neutral"]],
             ("7", "Conceptually cream skimming.", "Product and geography.", "neutral"),
             [MNLI_HEAD, MNLI_ROW], ("7", "Conceptually cream skimming.", "Product and geography.", None)),
    "qnli": ([["index", "question", "sentence", "label"], ["0", "When?", "In 1900.", "entailment"]],
             ("0", "When?", "In 1900.", "entailment"),
             [["index", "question", "sentence"], ["0", "What?", "That."]], ("0", "What?", "That.", None)),
    "rte": ([["index", "sentence1", "sentence2", "label"], ["0", "No weapons.", "Weapons found.", "not_entailment"]],
            ("0", "No weapons.", "Weapons found.", "not_entailment"),
            [["index", "sentence1", "sentence2"], ["0", "Mangla.", "Dam."]], ("0", "Mangla.", "Dam.", None)),
    "wnli": ([["index", "sentence1", "sentence2", "label"], ["0", "I stuck a pin.", "I stuck the pin.", "1"]],
             ("0", "I stuck a pin.", "I stuck the pin.", "1"),
             [["index", "sentence1", "sentence2"], ["0", "The drain.", "The hair."]],
             ("0", "The drain.", "The hair.", None)),
}


def fields(e: TextExample) -> tuple:
  return e.guid, e.text_a, e.text_b, e.label


@pytest.mark.parametrize("task", sorted(GLUE_FILES))
def test_read_glue_every_task(tmp_path, task):
  train_lines, train_first, test_lines, test_first = GLUE_FILES[task]
  train = glue_tsv.read_glue(task, write(tmp_path, "train.tsv", train_lines))
  assert fields(train[0]) == train_first
  first_line = 1 if task == "cola" else 2
  assert train[0].source == f"{tmp_path / 'train.tsv'}:{first_line}"
  test = glue_tsv.read_glue(task, write(tmp_path, "test.tsv", test_lines))
  assert [fields(e) for e in test] == [test_first]
  fmt = glue_tsv.GLUE_FORMATS[task]
  assert fmt.metrics and (fmt.labels is None) == (task == "stsb")
  if fmt.labels is not None:
    assert train[0].label in fmt.labels


def test_glue_formats():
  f = glue_tsv.GLUE_FORMATS
  assert sorted(f) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli"]
  assert f["mnli"].labels == ("contradiction", "entailment", "neutral")
  assert f["qnli"].labels == f["rte"].labels == ("entailment", "not_entailment")
  assert f["wnli"].labels == f["cola"].labels == ("0", "1")
  assert f["cola"].metrics == ("matthews_corr",)
  assert set(f["mrpc"].metrics) == set(f["qqp"].metrics) == {"accuracy", "f1"}
  assert set(f["stsb"].metrics) == {"pearson", "spearman"}
  cola = f["cola"].layouts[0]
  assert (cola.header, cola.text_a, cola.label, len(cola.columns)) == (False, 3, 1, 4)
  stsb = f["stsb"].layouts[0]
  assert (stsb.text_a, stsb.text_b, stsb.label, len(stsb.columns)) == (7, 8, 9, 10)


def test_mnli_dev_has_16_columns(tmp_path):
  head = MNLI_HEAD + ["label1", "label2", "label3", "label4", "label5", "gold_label"]
  row = MNLI_ROW + ["neutral", "contradiction", "contradiction", "contradiction", "contradiction", "contradiction"]
  dev = glue_tsv.read_glue("mnli", write(tmp_path, "dev_matched.tsv", [head, row]))
  assert dev[0].label == "contradiction"  # gold_label, the last column
  with pytest.raises(InputError, match=r"dev_matched.tsv:3: expected 16 tab-separated columns \(index, "):
    glue_tsv.read_glue("mnli", write(tmp_path, "dev_matched.tsv", [head, row, row[:12]]))


def test_glue_keeps_quotes_and_drops_a_bom(tmp_path):
  lines = [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["0", "1", "2", '"He said', 'it"']]
  path = write(tmp_path, "dev.tsv", lines, encoding="utf-8-sig")
  [e] = glue_tsv.read_glue("mrpc", path)
  assert (e.text_a, e.text_b, e.label) == ('"He said', 'it"', "0")


def test_glue_errors(tmp_path):
  sst = [["sentence", "label"], ["good", "1"]]
  path = write(tmp_path, "train.tsv", sst + [["bad", "1", "extra"]])
  with pytest.raises(InputError, match=r"train.tsv:3: expected 2 tab-separated columns \(sentence, label\), got 3"):
    glue_tsv.read_glue("sst2", path)
  path = write(tmp_path, "dev.tsv", sst + [["so-so", "2"]])
  with pytest.raises(InputError, match=r"dev.tsv:3: unknown sst2 label '2'; expected one of \['0', '1'\]"):
    glue_tsv.read_glue("sst2", path)
  path = write(tmp_path, "dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "neutral"]])
  with pytest.raises(InputError, match=r"dev.tsv:2: unknown rte label 'neutral'.*not_entailment"):
    glue_tsv.read_glue("rte", path)
  empty = tmp_path / "empty.tsv"
  empty.write_text("")
  with pytest.raises(InputError, match=r"empty.tsv:1: empty file"):
    glue_tsv.read_glue("cola", str(empty))
  with pytest.raises(InputError, match=r"head.tsv: no examples after the header"):
    glue_tsv.read_glue("sst2", write(tmp_path, "head.tsv", [["sentence", "label"]]))
  with pytest.raises(InputError, match=r"other.tsv:1: expected the header row of a GLUE qnli file"):
    glue_tsv.read_glue("qnli", write(tmp_path, "other.tsv", [["index", "sentence1", "sentence2", "label"]]))
  with pytest.raises(InputError, match=r"cola.tsv:1: expected 4 tab-separated columns"):
    glue_tsv.read_glue("cola", write(tmp_path, "cola.tsv", sst))
  with pytest.raises(InputError, match="GLUE task 'squad'"):
    glue_tsv.read_glue("squad", path)
  with pytest.raises(InputError, match="missing.tsv: cannot read"):
    glue_tsv.read_glue("sst2", str(tmp_path / "missing.tsv"))


@pytest.mark.parametrize("score", ["5.5", "-0.1", "high", "nan", ""])
def test_stsb_bad_score(tmp_path, score):
  path = write(tmp_path, "dev.tsv", [STSB_HEAD + ["score"], STSB_ROW + ["2.5"], STSB_ROW + [score]])
  with pytest.raises(InputError, match=r"dev.tsv:3: expected an STS-B similarity score, a number in \[0, 5\]"):
    glue_tsv.read_glue("stsb", path)


def test_qqp_skip_malformed(tmp_path):
  head = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
  lines = [head, ["1", "2", "3", "a?", "b?", "1"], ["2", "4", "5", "broken?"], ["3", "6", "7", "c?", "d?", "0"]]
  path = write(tmp_path, "train.tsv", lines)
  with pytest.raises(InputError, match=r"train.tsv:3: expected 6 tab-separated columns .*got 4"):
    glue_tsv.read_glue("qqp", path)
  report = ReadReport(path)
  examples = glue_tsv.read_glue("qqp", path, skip_malformed=True, report=report)
  assert [e.guid for e in examples] == ["1", "3"]
  assert (report.examples, report.skipped, report.reasons) == (2, 1, {"4 columns instead of 6": 1})
  assert len(glue_tsv.read_glue("qqp", path, skip_malformed=True)) == 2
  # The fine-tuning config's switch reaches the reader; the error names it.
  from configs import finetune  # pylint: disable=import-outside-toplevel
  from flaxbert.finetune.tasks.registry import get_task  # pylint: disable=import-outside-toplevel
  c = finetune.get_config("glue_qqp,tiny")
  with pytest.raises(InputError, match=r"got 4 \(--config.skip_malformed_rows=true skips such rows\)"):
    get_task(c).read(str(path), True, "train_path")
  c.skip_malformed_rows = True
  assert [e.guid for e in get_task(c).read(str(path), True, "train_path")] == ["1", "3"]


def test_not_utf8_names_the_line(tmp_path):
  path = tmp_path / "train.tsv"
  path.write_bytes(b"sentence\tlabel\ngood\t1\nbad \xff\t0\n")
  with pytest.raises(InputError, match=r"train.tsv:3: expected UTF-8 text"):
    glue_tsv.read_glue("sst2", str(path))


# --- custom tables -------------------------------------------------------------------------------


def test_read_table_csv_tsv_jsonl(tmp_path):
  csv_path = tmp_path / "train.csv"
  csv_path.write_text('sentence1,sentence2,label\n"Hello, ""you""","multi\nline",pos\n\nplain,other,neg\n')
  examples = readers.read_table(str(csv_path), "sentence1", "sentence2", "label")
  assert [(e.text_a, e.text_b, e.label) for e in examples] == [('Hello, "you"', "multi\nline", "pos"),
                                                                ("plain", "other", "neg")]
  assert [e.source for e in examples] == [f"{csv_path}:2", f"{csv_path}:5"]
  tsv = write(tmp_path, "dev.tsv", [["id", "text", "label"], ["a7", 'say "hi"', "pos"]])
  [e] = readers.read_table(tsv, "text", None, "label")
  assert (e.guid, e.text_a, e.text_b, e.label, e.source) == ("a7", 'say "hi"', None, "pos", f"{tsv}:2")
  jsonl = write(tmp_path, "dev.jsonl", [json.dumps({"text": "x", "label": 1}), "",
                                        json.dumps({"text": "y", "label": "neg", "idx": 4})])
  examples = readers.read_table(jsonl, "text", "", "label")
  assert [(e.guid, e.text_a, e.text_b, e.label) for e in examples] == [("dev-1", "x", None, "1"),
                                                                       ("4", "y", None, "neg")]


def test_read_table_unlabelled(tmp_path):
  path = write(tmp_path, "input.csv", ["sentence1,sentence2", "a,b"])
  assert [e.label for e in readers.read_table(path, "sentence1", "sentence2", "label")] == [None]
  path = write(tmp_path, "input.jsonl", [json.dumps({"sentence1": "a"})])
  assert readers.read_table(path, "sentence1", None, "label")[0].label is None


def test_read_table_errors(tmp_path):
  path = write(tmp_path, "dev.jsonl", [json.dumps({"text": "x", "label": 1}), json.dumps({"label": 0})])
  with pytest.raises(InputError, match=r"dev.jsonl:2: missing the text key 'text'"):
    readers.read_table(path, "text", None, "label")
  path = write(tmp_path, "dev.jsonl", [json.dumps({"text": "x", "label": 1}), json.dumps({"text": "y"})])
  with pytest.raises(InputError, match=r"dev.jsonl:2: missing label 'label'"):
    readers.read_table(path, "text", None, "label")
  path = write(tmp_path, "dev.jsonl", [json.dumps({"text": "x"}), "{oops"])
  with pytest.raises(InputError, match=r"dev.jsonl:2: expected one JSON object a line"):
    readers.read_table(path, "text", None, "label")
  path = write(tmp_path, "dev.jsonl", [json.dumps({"text": 3})])
  with pytest.raises(InputError, match=r"dev.jsonl:1: expected a string for 'text'"):
    readers.read_table(path, "text", None, "label")
  path = write(tmp_path, "dev.csv", ["text,label", "a,1", "b,1,2"])
  with pytest.raises(InputError, match=r"dev.csv:3: expected 2 comma-separated columns \(text, label\), got 3"):
    readers.read_table(path, "text", None, "label")
  with pytest.raises(InputError, match=r"dev.csv:1: expected a column 'sentence' in the header row"):
    readers.read_table(path, "sentence", None, "label")
  path = write(tmp_path, "dev.csv", ["text,label", "a,"])
  with pytest.raises(InputError, match=r"dev.csv:2: expected a label in column 'label'"):
    readers.read_table(path, "text", None, "label")
  with pytest.raises(InputError, match=r"dev.txt: expected a .tsv, .csv or .jsonl file"):
    readers.read_table(str(tmp_path / "dev.txt"), "text", None, "label")
  path = write(tmp_path, "empty.csv", [])
  with pytest.raises(InputError, match=r"empty.csv:1: empty file"):
    readers.read_table(path, "text", None, "label")


def test_read_pairs(tmp_path):
  path = write(tmp_path, "sts.tsv", [["sentence1", "sentence2", "score"], ["a", "b", "4.2"], ["c", "d", "1"]])
  examples = readers.read_pairs(path, "sentence1", "sentence2", "score")
  assert [(e.text_a, e.text_b, e.label) for e in examples] == [("a", "b", 4.2), ("c", "d", 1.0)]
  path = write(tmp_path, "sts.jsonl", [json.dumps({"s1": "a", "s2": "b", "score": 0.5}),
                                       json.dumps({"s1": "c", "s2": "d", "score": "high"})])
  with pytest.raises(InputError, match=r"sts.jsonl:2: expected a number for the score in column 'score', got 'high'"):
    readers.read_pairs(path, "s1", "s2", "score")
  path = write(tmp_path, "unscored.csv", ["s1,s2", "a,b"])
  assert readers.read_pairs(path, "s1", "s2", "score")[0].label is None


def test_check_labels():
  readers.check_labels(["a", "b", "a"], ["b", None], "train.csv", "dev.csv")
  with pytest.raises(InputError, match=r"dev.csv:3: label\(s\) \['c', 'd'\] do not occur in the training "
                                       r"data train.csv \(its labels: \['a', 'b'\]\)"):
    readers.check_labels(["a", "b"], ["d", "c", "a"], "train.csv", "dev.csv:3")


# --- CoNLL ---------------------------------------------------------------------------------------


def test_read_conll_2003(tmp_path):
  lines = ["-DOCSTART- -X- -X- O", "", "EU NNP B-NP B-ORG", "rejects VBZ B-VP O", "German JJ B-NP B-MISC",
           "", "", "Peter NNP B-NP B-PER", "Blackburn NNP I-NP I-PER", "", "-DOCSTART- -X- -X- O", "",
           "BRUSSELS NNP B-NP B-LOC"]
  path = write(tmp_path, "train.txt", lines)
  examples = readers.read_conll(path)
  assert examples == [
      TaggedExample("train-3", ("EU", "rejects", "German"), ("B-ORG", "O", "B-MISC"), f"{path}:3"),
      TaggedExample("train-8", ("Peter", "Blackburn"), ("B-PER", "I-PER"), f"{path}:8"),
      TaggedExample("train-13", ("BRUSSELS",), ("B-LOC",), f"{path}:13")]


def test_read_conll_wnut17_and_tokens_only(tmp_path):
  path = write(tmp_path, "wnut17train.conll", [["@paulwalk", "O"], ["It", "O"], ["Empire", "B-location"],
                                               ["State", "I-location"], "", [":)", "O"], ["\u00a0", "O"]])
  examples = readers.read_conll(path)
  assert [e.words for e in examples] == [("@paulwalk", "It", "Empire", "State"), (":)", "\u00a0")]
  assert examples[0].tags == ("O", "O", "B-location", "I-location")
  path = write(tmp_path, "input.txt", ["Hello", "world", "", "Again"])
  examples = readers.read_conll(path)
  assert [(e.words, e.tags) for e in examples] == [(("Hello", "world"), None), (("Again",), None)]


def test_read_conll_errors(tmp_path):
  path = write(tmp_path, "train.txt", ["EU NNP B-NP B-ORG", "rejects VBZ B-VP VERB"])
  with pytest.raises(InputError, match=r"train.txt:2: expected a tag \(O, or B-/I-/E-/S- and a type\).*'VERB'"):
    readers.read_conll(path)
  path = write(tmp_path, "train.txt", ["EU B-ORG", "", "rejects"])
  with pytest.raises(InputError, match=r"train.txt:3: expected a token and its tag as on line 1"):
    readers.read_conll(path)
  path = write(tmp_path, "train.txt", ["EU", "rejects O"])
  with pytest.raises(InputError, match=r"train.txt:2: expected a single token \(no tags\)"):
    readers.read_conll(path)
  path = write(tmp_path, "empty.txt", ["-DOCSTART- -X- -X- O", ""])
  with pytest.raises(InputError, match=r"empty.txt:1: no sentences"):
    readers.read_conll(path)


@pytest.mark.parametrize("a, b, limit, want_a, want_b", [
    ([1, 2, 3], [4, 5, 6], 5, [1, 2, 3], [4, 5]),  # a tie pops b, as run_classifier.py does
    ([1, 2, 3, 4], [5, 6], 4, [1, 2], [5, 6]),      # the longer side shrinks until they tie
    ([1, 2, 3], [4, 5, 6, 7, 8], 4, [1, 2], [4, 5]),
    ([1, 2, 3], None, 2, [1, 2], None),
])
def test_truncate_pair_is_the_originals(a, b, limit, want_a, want_b):
  """google-research/bert's _truncate_seq_pair: pop from a only while it is strictly longer."""
  from flaxbert.finetune.tasks.layout import truncate_pair  # pylint: disable=import-outside-toplevel
  assert truncate_pair(a, b, limit) is True
  assert (a, b) == (want_a, want_b)
  assert truncate_pair(a, b, limit) is False


def test_glue_csv_exports_read_with_each_tasks_own_column_names(tmp_path):
  """HF datasets' / TFDS's GLUE columns: SST-2 `sentence`, QNLI `question` + `sentence`, MNLI `premise` + `hypothesis`."""
  from configs import finetune  # pylint: disable=import-outside-toplevel
  from flaxbert.finetune.tasks.registry import get_task  # pylint: disable=import-outside-toplevel
  files = {"glue_sst2": ("sentence,label\nw1 w2,1\n", ("w1 w2", None)),
           "glue_qnli": ("question,sentence,label\nq1?,s1.,entailment\n", ("q1?", "s1.")),
           "glue_mnli": ("premise,hypothesis,label\np1,h1,neutral\n", ("p1", "h1"))}
  for task, (text, want) in files.items():
    path = tmp_path / f"{task}.csv"
    path.write_text(text)
    [example] = get_task(finetune.get_config(f"{task},tiny")).read(str(path), True, "train_path")
    assert (example.text_a, example.text_b) == want, task


def test_ner_tag_unseen_in_training_is_named_at_its_own_line(tmp_path):
  from configs import finetune  # pylint: disable=import-outside-toplevel
  from flaxbert.finetune.tasks.registry import get_task  # pylint: disable=import-outside-toplevel
  task = get_task(finetune.get_config("ner,tiny"))
  (tmp_path / "train.txt").write_text("w1\tB-PER\nw2\tO\n\nw3\tO\n")
  (tmp_path / "dev.txt").write_text("w1\tO\nw2\tB-FOO\n\nw3\tO\n")
  task.learn(task.read(str(tmp_path / "train.txt"), True, "train_path"))
  with pytest.raises(InputError, match=r"dev.txt:2: tag\(s\) \['B-FOO'\] of the dev data are not among"):
    task.check([("dev", task.read(str(tmp_path / "dev.txt"), False, "eval_path"))])
