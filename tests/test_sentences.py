"""flaxbert.text.sentences: the one sentence splitter (pretraining documents, news articles) and
the BBC reference splitter, on hand-made text."""
import pytest

from flaxbert.text.sentences import split_reference, split_sentences


@pytest.mark.parametrize("text, expected", [
    ("Mr. Smith met Dr. Jones in the U.S. capital. They named firms, e.g. Apple and IBM. Then they left!",
     ["Mr. Smith met Dr. Jones in the U.S. capital.", "They named firms, e.g. Apple and IBM.", "Then they left!"]),
    ('He said: "It is over." Then he left. "Will it work?" she asked. Who knows?',
     ['He said: "It is over."', "Then he left.", '"Will it work?" she asked.', "Who knows?"]),
    ("Profits rose 5.2% in 2004. 2005 looks better. (Shares fell.) Wait... It happened.",
     ["Profits rose 5.2% in 2004.", "2005 looks better.", "(Shares fell.)", "Wait...", "It happened."]),
    ("Ad sales boost profit\n\nFirst paragraph. Second sentence\nthird line\n\n  \n Last one.",
     ["Ad sales boost profit", "First paragraph.", "Second sentence", "third line", "Last one."]),
    ("J. K. Rowling lives at No. 10 Acacia Road. it costs 3 vs. 4 dollars. ok then.",
     ["J. K. Rowling lives at No. 10 Acacia Road. it costs 3 vs. 4 dollars. ok then."]),
    ("The number is no. But 5 people came.", ["The number is no.", "But 5 people came."]),
    ("", []),
])
def test_split_sentences(text, expected):
  assert split_sentences(text) == expected


@pytest.mark.parametrize("summary, expected", [
    ("TimeWarner said sales rose 2% to $11.1bn from $10.9bn.For the full-year, it made $3.36bn.However, AOL lost.",
     ["TimeWarner said sales rose 2% to $11.1bn from $10.9bn.", "For the full-year, it made $3.36bn.",
      "However, AOL lost."]),
    ('He said: "It is over."The dollar fell.', ['He said: "It is over."', "The dollar fell."]),
    ('The dollar fell."I think so," he said.Will it rise?Yes!', ["The dollar fell.", '"I think so," he said.',
                                                                  "Will it rise?", "Yes!"]),
    ("Sales fell.£5m was lost.$3bn too.(Shares fell.)2005 is next.",
     ["Sales fell.", "£5m was lost.", "$3bn too.", "(Shares fell.)", "2005 is next."]),
    ("One. Two.\nThree.Mr.Smith agreed.", ["One.", "Two.", "Three.", "Mr.Smith agreed."]),
])
def test_split_reference(summary, expected):
  assert split_reference(summary) == expected


def test_split_sentences_rules():
  # an abbreviation before a capital does not end the sentence; "etc." does (as in the news data)
  assert split_sentences("One. Two! Three? four.") == ["One.", "Two!", "Three? four."]
  assert split_sentences("See Fig. 3 and Dr. Who. Then 1999 came.") == ["See Fig. 3 and Dr. Who.", "Then 1999 came."]
  assert split_sentences("He said \"Stop.\" Then he left.") == ["He said \"Stop.\"", "Then he left."]
  assert split_sentences("   ") == []
  assert split_sentences("Mt. Hood and Univ. Press. Then apples, pears etc. Next one.") == [
      "Mt. Hood and Univ. Press.", "Then apples, pears etc.", "Next one."]
