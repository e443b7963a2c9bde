"""Tags: what a tag may be, and the rule that bounds a team's tags a day (the ledgers apply
it: tests/test_ledger.py; Lua and Python agree: tests/test_parity_admission.py)."""

from __future__ import annotations

import pytest

from gateway import tags


@pytest.mark.parametrize(
    "value", ["nightly-reindex", "a", "user@example.com", "job:42+retry", "A.b_c", "x" * 64]
)
def test_a_well_formed_tag_is_itself(value: str) -> None:
    assert tags.check(value) == value


@pytest.mark.parametrize("value", [None, ""])
def test_no_tag_is_untagged(value: str | None) -> None:
    assert tags.check(value) == tags.UNTAGGED


@pytest.mark.parametrize(
    "value", ["-starts-with-dash", "=1+1", "has space", "comma,", "x" * 65, "é", "a|b", "a/b"]
)
def test_a_malformed_tag_is_refused_with_the_rule(value: str) -> None:
    with pytest.raises(tags.InvalidTag, match="1 to 64 letters"):
        tags.check(value)


@pytest.mark.parametrize(
    ("user", "tag"),
    [("u-1", "u-1"), ("Ada Lovelace", "Ada_Lovelace"), ("  =1+1", "1+1"), ("a/b|c", "a_b_c"),
     ("élan", "lan"), ("???", tags.UNTAGGED), ("", tags.UNTAGGED), ("x" * 80, "x" * 64)],
)  # fmt: skip
def test_an_openai_user_that_is_no_tag_is_made_one(user: str, tag: str) -> None:
    assert tags.from_user(user) == tag
    assert tags.check(tags.from_user(user)) == tag  # always a well-formed tag


def test_kept_admits_tags_up_to_the_bound_then_other() -> None:
    known = {"a", tags.UNTAGGED, tags.OTHER}
    assert tags.kept("b", known, 2) == "b"  # untagged and other do not count
    assert tags.kept("c", {"a", "b"}, 2) == tags.OTHER
    assert tags.kept("a", {"a", "b"}, 2) == "a"
    assert tags.kept(tags.UNTAGGED, {"a", "b"}, 2) == tags.UNTAGGED
