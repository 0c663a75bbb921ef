"""The pure agreement of vantage points: down only on a quorum, disputed below it, stale with nobody."""
from __future__ import annotations

import pytest

from dashboard.agreement import Verdict, agree, quorum


def views(**states: str) -> dict[str, Verdict]:
    return {name: Verdict(name, state, f"{state} here", 1.0) for name, state in states.items()}


@pytest.mark.parametrize(("down_quorum", "live", "need"), [("majority", 1, 1), ("majority", 2, 2),
                                                          ("majority", 3, 2), ("majority", 5, 3), (2, 5, 2)])
def test_quorum_is_a_majority_of_the_live_vantage_points_or_the_configured_count(down_quorum, live, need):
    assert quorum(down_quorum, live) == need


def test_a_majority_seeing_it_down_makes_it_down_naming_them():
    agreed = agree(views(a="down", b="down", c="up"), "majority")
    assert (agreed.state, agreed.disputed) == ("down", False)
    assert agreed.reason == "down from a, b: down here"


def test_every_vantage_point_seeing_it_down_says_so():
    assert agree(views(a="down", b="down"), "majority").reason == "down from every vantage point: down here"


def test_fewer_than_the_quorum_seeing_it_down_is_degraded_and_disputed_saying_who_sees_what():
    agreed = agree(views(ap="down", us="up", eu="up"), "majority")
    assert (agreed.state, agreed.disputed) == ("degraded", True)
    assert agreed.reason.startswith("down from ap only; up from eu, us (1 of 3 live vantage points")


def test_a_fixed_quorum_larger_than_the_live_vantage_points_never_makes_it_down():
    agreed = agree(views(a="down"), 2)
    assert (agreed.state, agreed.disputed) == ("degraded", True)


def test_no_verdict_at_all_is_stale_and_no_poll_yet_is_unknown():
    assert agree({}, "majority").state == "stale"
    assert agree(views(a="stale", b="unknown"), "majority").state == "stale"
    assert agree(views(a="unknown"), "majority").state == "unknown"


def test_a_stale_vantage_point_does_not_count_while_others_are_fresh():
    assert agree(views(a="stale", b="up", c="up"), "majority").state == "up"
    assert agree(views(a="stale", b="down", c="up"), "majority").disputed


def test_without_anyone_seeing_it_down_the_worst_view_wins_and_unknown_views_do_not_count():
    assert agree(views(a="up", b="degraded", c="unknown"), "majority").state == "degraded"
    assert agree(views(a="up", b="up"), "majority").state == "up"
    # One live vantage point among unknown ones is a majority of the live ones.
    assert agree(views(a="down", b="unknown"), "majority").state == "down"
