"""The flush policy and the buffer, with a fake clock: which rule flushes, and when."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming_app.drive.flush import Buffer, FlushPolicy, Terminal, ends_at_boundary

POLICY = FlushPolicy(min_interval=0.25, max_interval=0.5, max_chars=100)


@pytest.mark.parametrize(
    "text",
    [
        "End.",
        "End. ",
        "Really?",
        "Wow!",
        "Quote.”",
        "(Aside.) ",
        "続く。",
        "なに？",
        "Etc…",
        "line\n",
    ],
)
def test_sentence_and_line_ends_are_boundaries(text):
    assert ends_at_boundary(text)


@pytest.mark.parametrize("text", ["word", "3.14", "e.g", "```py", "- item", "中文"])
def test_other_text_is_not_a_boundary(text):
    assert not ends_at_boundary(text)


def test_a_sentence_end_is_due_min_interval_after_the_last_flush():
    buffer = Buffer(POLICY, now=10.0)
    buffer.append("A whole sentence.", now=10.01)
    assert buffer.due_at() == 10.25  # the boundary rule, not the interval (10.51)


def test_text_without_a_boundary_is_due_max_interval_after_it_came():
    buffer = Buffer(POLICY, now=10.0)
    buffer.append("no punctuation", now=10.1)
    buffer.append(" at all", now=10.3)
    assert buffer.due_at() == pytest.approx(10.6)  # the oldest text's wait


def test_a_full_buffer_is_due_at_once():
    buffer = Buffer(POLICY, now=10.0)
    buffer.append("x" * 99, now=10.0)
    assert buffer.due_at() > 10.0
    buffer.append("x", now=10.0)
    assert buffer.due_at() == float("-inf")


def test_nothing_is_due_while_a_batch_is_being_written():
    buffer = Buffer(POLICY, now=0.0)
    buffer.append("First.", now=0.0)
    batch = buffer.seal()
    buffer.append("Second.", now=0.1)
    assert buffer.due_at() == float("inf"), "flushes of one stream never overlap"
    assert buffer.committed(now=0.2) is batch
    assert buffer.due_at() == pytest.approx(0.45)


def test_append_says_when_the_next_flush_may_have_come_forward():
    buffer = Buffer(POLICY, now=0.0)
    assert buffer.append("first", now=0.0), "the first text starts a deadline"
    assert not buffer.append(" more", now=0.0)
    assert buffer.append(" end.", now=0.0), "a boundary brings it forward"
    assert not buffer.append(" end.", now=0.0), "already at a boundary"
    assert buffer.append("x" * 100, now=0.0), "full"


def test_batches_follow_each_other_exactly():
    buffer = Buffer(POLICY, now=0.0)
    buffer.append("héllo ", now=0.0)
    first = buffer.seal()
    buffer.committed(now=0.1)
    buffer.append("😀 wörld", now=0.2)
    last = buffer.seal(Terminal("done"))
    assert (first.seq, first.offset, first.end) == (0, 0, 6)
    assert (last.seq, last.offset, last.text, last.terminal) == (1, 6, "😀 wörld", ("done", None))


def test_a_refused_batch_is_written_later_with_the_rest():
    buffer = Buffer(POLICY, now=0.0)
    buffer.append("Before the cancel. ", now=0.0)
    buffer.seal()
    buffer.refused()  # the database said: asked to stop
    buffer.append("And after.", now=0.1)
    last = buffer.seal(Terminal("cancelled"))
    assert (last.seq, last.offset, last.text) == (0, 0, "Before the cancel. And after.")


@given(st.lists(st.tuples(st.text(max_size=8), st.floats(min_value=0, max_value=0.3)), max_size=60))
def test_following_the_policy_flushes_at_most_once_per_min_interval(arrivals):
    """Driven by the policy alone (a flush when due), flushes other than those of a full
    buffer come at least MIN_FLUSH_INTERVAL apart: a stream costs the database at most
    1 / MIN_FLUSH_INTERVAL transactions a second, however fast the model is."""
    policy = FlushPolicy(min_interval=0.25, max_interval=0.5, max_chars=10**9)
    now = 0.0
    buffer = Buffer(policy, now)
    flushes: list[float] = []
    for text, gap in arrivals:
        # Every flush due before the next piece comes happens on time.
        while buffer.due_at() <= now + gap:
            at = max(buffer.due_at(), now)
            buffer.seal()
            buffer.committed(at)
            flushes.append(at)
        now += gap
        if text:
            buffer.append(text, now)
    assert all(b - a >= 0.25 - 1e-9 for a, b in zip(flushes, flushes[1:], strict=False))
    assert buffer.due_at() == float("inf") or buffer.due_at() <= now + 0.5


def test_a_discarded_batch_takes_its_part_entries_with_it():
    entries: list[dict[str, object]] = []
    buffer = Buffer(POLICY, now=0.0, parts=entries)
    entries.append({"at": 0, "type": "reasoning"})
    buffer.append("think", 0.0)
    buffer.seal()
    buffer.committed(0.1)
    entries.append({"at": 5, "type": "tool-call", "id": "c", "name": "f"})
    buffer.append("{}", 0.2)
    assert buffer.seal().parts is not None
    buffer.discard()  # the database refused it
    assert entries == [{"at": 0, "type": "reasoning"}]
    entries.append({"at": 5, "type": "text"})  # the run is still stopping
    last = buffer.seal(Terminal("error", "refused"))
    assert last.parts is None and last.text == ""
