"""The Tasks view's filter language and page query (`bitinglip.control.queue.filter`), on a real
state database: words, quotes, negation, literal `%` and `_`, wrong words, sorts, counts."""

from __future__ import annotations

import pytest

from bitinglip.control.plane import ControlPlane
from bitinglip.control.queue.filter import SORTS, page, parse_filter
from bitinglip.control.queue.tasks import TaskQueue, TaskSpec
from bitinglip.errors import InputError
from tests.conftest import NOWHERE


def ids(plane: ControlPlane, text: str, sort: str = "id") -> list[int]:
    return [row.id for row in page(plane.store, parse_filter(text), sort).rows]


@pytest.fixture
def prompts(plane: ControlPlane) -> list[int]:
    texts = ["hello world", "hello there", "100% sure", "snake_case", "HELLO loud"]
    return plane.submit_many(
        [
            TaskSpec(kind="echo", payload={"prompt": t}, labels=NOWHERE, priority=n)
            for n, t in enumerate(texts)
        ]
    )


def test_words_quotes_and_negation(plane: ControlPlane, prompts: list[int]) -> None:
    world, there, sure, snake, loud = prompts
    assert ids(plane, "hello") == [loud, there, world]  # case-insensitive
    assert ids(plane, '"hello world"') == [world]
    assert ids(plane, "hello -world") == [loud, there]
    assert ids(plane, "%") == [sure]  # literal, not a wildcard
    assert ids(plane, "e_c") == [snake]
    assert ids(plane, "o_w") == []  # "hello world" would match a wildcard
    assert ids(plane, str(sure)) == [sure]  # an id
    assert ids(plane, "state:queued kind:echo -state:running") == prompts[::-1]
    assert ids(plane, "kind:generate") == []


def test_sorts_and_counts(plane: ControlPlane, prompts: list[int]) -> None:
    assert ids(plane, "", "priority") == prompts[::-1]
    for sort in SORTS:
        assert sorted(ids(plane, "", sort)) == prompts
    found = page(plane.store, parse_filter("hello"), "id", limit=2)
    assert len(found.rows) == 2 and found.matching == 3
    assert found.counts["queued"] == 5 and sum(found.counts.values()) == 5


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("state:bogus", "unknown state; use one of queued"),
        ("kind:nope", "unknown kind; use one of echo"),
        ("job:abc", "a job is a number"),
        ("job:²", "a job is a number"),
        ("job:٣", "a job is a number"),  # an Arabic-Indic three: int() takes it, SQL never
        ("job:3,²", "a job is a number"),
        (f"job:{2**63}", "a job is a number"),
        ('"open', "No closing quotation"),
    ],
)
def test_wrong_words_say_why(text: str, says: str) -> None:
    with pytest.raises(InputError, match=says):
        parse_filter(text)


@pytest.mark.parametrize("word", ["²", "#²", "٣", str(2**63), "#" + "9" * 20, "-" + "9" * 20])
def test_a_word_that_is_not_an_id_in_range_is_text(
    plane: ControlPlane, prompts: list[int], word: str
) -> None:
    """Only ASCII digits up to SQLite's largest integer are an id; anything else is text (a
    bigger number overflowed every query of the page)."""
    found = parse_filter(word)
    assert not any(isinstance(arg, int) for arg in found.args)
    expected = prompts[::-1] if word.startswith("-") else []
    assert ids(plane, word) == expected


def test_the_largest_id_is_still_an_id() -> None:
    assert parse_filter(str(2**63 - 1)).args[0] == 2**63 - 1
    assert parse_filter(f"job:{2**63 - 1}").args == (2**63 - 1,)


def test_tokens_per_s_from_timings_or_usage(plane: ControlPlane) -> None:
    now = [100.0]
    queue = TaskQueue(plane.store, plane.profile.queue, clock=lambda: now[0])
    results = [
        {"text": "a", "timings": {"tokens_per_s": 12.5}, "usage": {"completion_tokens": 3}},
        {"text": "b", "usage": {"completion_tokens": 20}},  # 20 tokens over 4 s
        {"n": 1},  # an echo: no tokens
    ]
    for result in results:
        task_id = queue.submit(TaskSpec(kind="echo", payload={}))
        (claim,) = queue.claim("runner")
        now[0] += 4.0
        queue.complete(task_id, claim.token, result)
    rows = page(plane.store, parse_filter(""), "tokens_s").rows
    assert [row.tokens_per_s for row in rows] == [12.5, 5.0, None]
