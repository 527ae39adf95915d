"""One object per event loop (streaming_app.loops): what the publisher, committer and
hub of a process are kept by."""

from __future__ import annotations

import asyncio
import gc

import pytest

from streaming_app.loops import PerLoop


class Thing:
    pass


def test_each_loop_has_its_own_made_once_and_dropped_with_the_loop():
    made: list[Thing] = []

    def make() -> Thing:
        made.append(Thing())
        return made[-1]

    per_loop = PerLoop(make)

    async def twice() -> tuple[Thing, Thing]:
        return per_loop.get(), per_loop.get()

    first = asyncio.run(twice())
    second = asyncio.run(twice())
    assert first[0] is first[1] and second[0] is second[1]  # one per loop
    assert first[0] is not second[0] and len(made) == 2  # a new loop, a new one
    gc.collect()
    assert len(per_loop._items) == 0  # the loops are gone, so are theirs


def test_without_a_factory_a_loop_has_what_it_was_given():
    per_loop: PerLoop[Thing] = PerLoop()

    async def use() -> None:
        assert per_loop.peek() is None
        with pytest.raises(LookupError):
            per_loop.get()
        thing = Thing()
        per_loop.set(thing)
        assert per_loop.get() is per_loop.peek() is thing
        assert per_loop.pop() is thing and per_loop.peek() is None

    asyncio.run(use())
