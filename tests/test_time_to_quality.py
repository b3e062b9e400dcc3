"""bench/time_to_quality.py's verdicts on made-up reports, and its --reference parsing."""
import pytest

from bench.time_to_quality import reference_arms, verdicts


def arm(*scores: float, metric: str = "accuracy") -> dict:
  return {"summary": {metric: {"mean": sum(scores) / len(scores), "min": min(scores), "max": max(scores)}}}


def test_beating_random_needs_more_than_the_larger_seed_spread():
  report = {"finetune": {"sst2": {"flaxbert": arm(0.80, 0.82), "random": arm(0.70, 0.78)},
                         "wnut17": {"flaxbert": arm(0.30, 0.31, metric="f1"), "random": arm(0.0, 0.02, metric="f1")}}}
  v = verdicts(report)["flaxbert_beats_random"]
  assert v["sst2"]["holds"] is False  # +0.07 against a random spread of 0.08
  assert v["sst2"]["difference_of_means"] == pytest.approx(0.07)
  assert v["wnut17"]["holds"] is True and v["all"] is False


def test_a_reference_is_judged_against_its_own_random_init():
  report = {"finetune": {"sst2": {"random": arm(0.73, 0.74), "minilm": arm(0.85, 0.87),
                                  "minilm_random": arm(0.72, 0.75)}}}
  v = verdicts(report)
  assert v["reference_beats_its_random"] == {"minilm": {"sst2": {
      "holds": True, "difference_of_means": pytest.approx(0.125), "larger_spread": pytest.approx(0.03),
      "metric": "accuracy"}}}
  assert v["flaxbert_beats_random"] == {"all": False}  # no flaxbert arm: nothing holds


@pytest.mark.parametrize("spec, item", [("minilm", "minilm"), ("=path", "=path"), ("random=path", "random=path"),
                                        ("a=x,a_random=y", "a_random=y")])
def test_a_bad_reference_names_the_item_before_loading_anything(spec, item, tmp_path):
  with pytest.raises(SystemExit, match=f"--reference: {item!r} is not NAME=PATH with a new NAME"):
    reference_arms(spec, tmp_path, 0)
