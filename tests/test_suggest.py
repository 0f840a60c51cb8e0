"""suggest's ranking rule on hand-made quality figures: the score is the net change where the rule fires."""

from __future__ import annotations

import pytest

from model_rewrite.quality import QualityReport
from model_rewrite.report import ChangeReport
from model_rewrite.suggest import Candidate, rank_candidates


def cand(layer: str, inside: float, outside: float, collateral: float, pf: float | None = 0.9,
         transfer: float | None = 0.9) -> Candidate:
    change = ChangeReport(inside, outside, inside / outside, 0.1, 1.0, 0.98)
    return Candidate(layer, 1, QualityReport("e", layer, (1, 2), 1, pf, transfer, change, collateral), 0.1)


def test_the_score_is_inside_minus_outside_minus_collateral():
    assert cand("a", 0.30, 0.05, 0.02).score == pytest.approx(0.23)
    assert cand("a", 0.10, 0.20, 0.20).score == pytest.approx(-0.30)  # changes everything alike: below 0
    assert Candidate("x", 1, None, 0.0, "no cell").score == float("-inf")


def test_ranking_ignores_paste_fidelity_and_keeps_a_layer_with_some_collateral():
    # the world's lessons: a high paste fidelity with little held-out change loses; a candidate whose
    # collateral is over the old 0.05 cut-off still wins when its net change is the largest
    timid = cand("timid", 0.06, 0.02, 0.015, pf=0.95, transfer=0.2)
    strong = cand("strong", 0.33, 0.06, 0.06, pf=0.40, transfer=0.05)
    noisy = cand("noisy", 0.40, 0.20, 0.20)
    unsolved = Candidate("none", 1, None, 0.0, "no cell")
    assert [c.layer for c in rank_candidates([unsolved, timid, noisy, strong])] == ["strong", "timid", "noisy", "none"]


def test_ties_keep_the_order_they_were_tried_in():
    a, b = cand("a", 0.2, 0.05, 0.05), cand("b", 0.2, 0.05, 0.05)
    assert [c.layer for c in rank_candidates([a, b])] == ["a", "b"]
    assert [c.layer for c in rank_candidates([b, a])] == ["b", "a"]


def test_to_dict_carries_the_figures_of_the_score():
    d = cand("a", 0.30, 0.05, 0.02).to_dict()
    assert d["score"] == pytest.approx(d["inside_change"] - d["outside_change"] - d["collateral"])
