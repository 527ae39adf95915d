"""Creating, claiming, reading and deleting streams."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import OperationalError, connection
from django.test import override_settings

from streaming_app import (
    InvalidOffset,
    StreamNotPending,
    create_stream,
    delete_stream,
    get_stream_body,
)
from streaming_app.drive.flush import Batch
from streaming_app.drive.persist import StreamEnded, write_batch
from streaming_app.models import Chunk, Status, Stream
from streaming_app.streams import claim_stream, compact_stream, parse_offset

from .helpers import written

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_new_stream_is_pending_and_empty():
    stream = create_stream(metadata={"chat": 1})
    body = get_stream_body(stream.pk)
    assert (body.status, body.text, body.length, body.offset, body.error) == (
        "pending",
        "",
        0,
        0,
        None,
    )
    assert Stream.objects.get(pk=stream.pk).metadata == {"chat": 1}


def test_only_the_first_claim_wins():
    stream = create_stream()
    claim_stream(stream.pk)
    with pytest.raises(StreamNotPending) as second:
        claim_stream(str(stream.pk))
    assert second.value.status == "streaming"
    assert str(second.value) == "the stream is already streaming"


@pytest.mark.parametrize("bad_id", [uuid.uuid4(), "not-a-uuid", "", "../../etc"])
def test_unknown_or_malformed_ids_are_unknown_streams(bad_id):
    with pytest.raises(Stream.DoesNotExist):
        claim_stream(bad_id)
    with pytest.raises(Stream.DoesNotExist):
        get_stream_body(bad_id)
    assert delete_stream(bad_id) is False


def test_simultaneous_claims_have_exactly_one_winner():
    stream = create_stream()
    barrier = threading.Barrier(24)
    outcomes: list[str] = []

    def attempt():
        try:
            barrier.wait()
            claim_stream(stream.pk)
            outcomes.append("claimed")
        except StreamNotPending:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["claimed"] + ["refused"] * 23


def test_reads_from_any_offset_across_chunks():
    pieces = ["Hello, ", "wörld! ", "😀👩🏽‍💻 ", "中文。"]
    stream = written(pieces, status=Status.DONE)
    text = "".join(pieces)
    assert stream.length == len(text)
    for offset in range(len(text) + 1):
        body = get_stream_body(stream.pk, offset)
        assert (body.text, body.offset, body.length) == (text[offset:], offset, len(text))


def test_the_text_read_agrees_with_the_status_read():
    stream = written(["committed. "])
    # A later flush commits after the row was read: the body stops at the row's length.
    loaded = Stream.objects.get(pk=stream.pk)
    write_batch(stream.pk, Batch(seq=1, offset=loaded.length, text="later"))
    from streaming_app.streams import body_of

    assert body_of(loaded).text == "committed. "
    assert get_stream_body(stream.pk).text == "committed. later"


def test_offsets_past_the_end():
    live = written(["abc"])
    assert get_stream_body(live.pk, 10).text == ""  # a live stream may grow to it
    done = written(["abc"], status=Status.DONE)
    assert get_stream_body(done.pk, 3).text == ""
    with pytest.raises(InvalidOffset, match=r"ended \(done\) at .* before the requested offset"):
        get_stream_body(done.pk, 4)


@pytest.mark.parametrize("value", [-1, "-1", "abc", "1.5", "", "٣", "+3", "1_0", "9" * 30, True])
def test_bad_offsets_are_refused(value):
    with pytest.raises(InvalidOffset):
        parse_offset(value)


def test_parse_offset_accepts_plain_integers():
    assert parse_offset("42") == 42
    assert parse_offset(7) == 7


def test_terminal_is_final():
    stream = written(["the end."], status=Status.DONE)
    with pytest.raises(StreamEnded):
        write_batch(stream.pk, Batch(seq=1, offset=stream.length, text=" more"))
    assert get_stream_body(stream.pk).text == "the end."


def test_a_retried_batch_is_not_written_twice():
    stream = written(["once. "])
    # The commit of seq 0 landed but its answer was lost: the writer retries it.
    write_batch(stream.pk, Batch(seq=0, offset=0, text="once. "))
    assert list(Chunk.objects.filter(stream=stream).values_list("text", flat=True)) == ["once. "]
    assert get_stream_body(stream.pk).text == "once. "


def test_deleting_a_stream_deletes_its_chunks():
    stream = written(["a", "b"], status=Status.DONE)
    assert delete_stream(stream.pk) is True
    assert not Chunk.objects.filter(stream_id=stream.pk).exists()
    assert delete_stream(stream.pk) is False


@pytest.mark.parametrize(
    "delete",
    [
        pytest.param(lambda stream: delete_stream(stream.pk), id="delete_stream"),
        pytest.param(lambda stream: stream.delete(), id="instance"),
        pytest.param(lambda stream: stream.owner.delete(), id="with-its-owner"),
    ],
)
def test_a_flush_racing_a_deletion_neither_breaks_it_nor_survives_it(delete):
    """Django deletes the chunks, then the stream: a writer flushing in between must
    not leave a chunk behind (on PostgreSQL, the deletion failed on its foreign key)."""
    from django.contrib.auth import get_user_model

    owner = get_user_model().objects.create_user("racer")
    stream = create_stream(owner=owner)
    claim_stream(stream.pk)
    write_batch(stream.pk, Batch(seq=0, offset=0, text="first. "))
    flush: dict[str, object] = {}

    def flush_now() -> None:
        try:
            write_batch(stream.pk, Batch(seq=1, offset=7, text="second. "))
            flush["outcome"] = "committed"
        except StreamEnded:
            flush["outcome"] = "refused"
        except OperationalError:
            flush["outcome"] = "busy"  # the row is held: a writer tries again next tick
        finally:
            connection.close()

    def between_chunks_and_stream(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith('DELETE FROM "streaming_app_chunk"') and "thread" not in flush:
            # The writer's flush, from another connection, right here.
            flush["thread"] = thread = threading.Thread(target=flush_now)
            thread.start()
            thread.join(timeout=1)  # it waits on the stream's lock, if there is one
        return result

    with connection.execute_wrapper(between_chunks_and_stream):
        delete(Stream.objects.get(pk=stream.pk))
    flush["thread"].join(timeout=5)  # type: ignore[attr-defined]
    assert flush["outcome"] in ("committed", "refused", "busy")
    if flush["outcome"] == "busy":
        with pytest.raises(StreamEnded):  # tried again: the stream is gone
            write_batch(stream.pk, Batch(seq=1, offset=7, text="second. "))
    assert not Stream.objects.filter(pk=stream.pk).exists()
    assert not Chunk.objects.filter(stream_id=stream.pk).exists()


def test_live_finished_and_stale_querysets():
    from datetime import timedelta

    from django.utils import timezone

    old, silent = create_stream(), written(["x"])
    Stream.objects.filter(pk__in=[old.pk, silent.pk]).update(
        updated_at=timezone.now() - timedelta(seconds=120)
    )
    fresh = create_stream()
    finished = written(["x"], status=Status.DONE)
    live = {old.pk, silent.pk, fresh.pk}
    assert set(Stream.objects.live().values_list("pk", flat=True)) == live
    # A pending stream is stale only past a pending timeout.
    assert list(Stream.objects.stale(60, None).values_list("pk", flat=True)) == [silent.pk]
    assert set(Stream.objects.stale(60, 100).values_list("pk", flat=True)) == {old.pk, silent.pk}
    assert list(Stream.objects.stale(200, 100).values_list("pk", flat=True)) == [old.pk]
    assert list(Stream.objects.finished().values_list("pk", flat=True)) == [finished.pk]


def test_compacting_merges_a_finished_streams_chunks_and_offsets_still_work():
    pieces = ["Hello, ", "wörld! ", "😀👩🏽‍💻 ", "e\u0301 ", "中文。"]
    text = "".join(pieces)
    with override_settings(STREAMING_APP={"COMPACT_FINISHED": False}):
        stream = written(pieces, status=Status.DONE)
    assert compact_stream(stream.pk) is True
    assert list(Chunk.objects.filter(stream=stream).values_list("seq", "offset", "text")) == [
        (0, 0, text)
    ]
    for offset in range(len(text) + 1):
        body = get_stream_body(stream.pk, offset)
        assert (body.text, body.offset, body.length) == (text[offset:], offset, len(text))
    assert compact_stream(stream.pk) is False, "nothing left to merge"


def test_compacting_leaves_live_and_unknown_streams_alone():
    live = written(["still ", "going "])
    assert compact_stream(live.pk) is False
    assert Chunk.objects.filter(stream=live).count() == 2
    assert compact_stream(uuid.uuid4()) is False
    assert compact_stream("not-a-uuid") is False
    # The writer goes on where it was.
    write_batch(live.pk, Batch(seq=2, offset=12, text="on.", terminal=(Status.DONE, None)))
    assert get_stream_body(live.pk, 6).text == "going on."


def test_readers_during_compaction_always_get_the_exact_text():
    """Readers that read the stream's row before the merge commits and its chunks after
    (each is held between the two until the merge has committed) get the exact text."""
    pieces = [f"sentence {i}, " for i in range(200)]
    text = "".join(pieces)
    with override_settings(STREAMING_APP={"COMPACT_FINISHED": False}):
        stream = written(pieces, status=Status.DONE)
    offsets = [0, 1, 500, len(text) - 1]
    merged = threading.Event()
    holding = threading.Semaphore(0)
    got: dict[int, str] = {}

    def read(offset: int) -> None:
        def hold_before_the_chunks(execute, sql, params, many, context):
            if "streaming_app_chunk" in sql and not merged.is_set():
                holding.release()  # the row is read; the chunks are not yet
                merged.wait(10)
            return execute(sql, params, many, context)

        try:
            with connection.execute_wrapper(hold_before_the_chunks):
                got[offset] = get_stream_body(stream.pk, offset).text
        finally:
            connection.close()

    readers = [threading.Thread(target=read, args=(offset,)) for offset in offsets]
    for reader in readers:
        reader.start()
    for _ in offsets:
        assert holding.acquire(timeout=10), "a reader never got between its two reads"
    try:
        assert compact_stream(stream.pk) is True
    finally:
        merged.set()
        for reader in readers:
            reader.join()
    assert got == {offset: text[offset:] for offset in offsets}
    assert get_stream_body(stream.pk).text == text


def test_compact_streams_command_merges_what_ended_without_a_writer(capsys):
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    with override_settings(STREAMING_APP={"COMPACT_FINISHED": False}):
        ended = [written(["a. ", "b. "], status=Status.DONE) for _ in range(3)]
        orphan = written(["left ", "behind "])
        Stream.objects.filter(pk=orphan.pk).update(
            updated_at=timezone.now() - timedelta(seconds=600)
        )
        call_command("expire_streams")
    live = written(["x. ", "y. "])
    one = written(["one chunk."], status=Status.DONE)
    call_command("compact_streams", "--batch-size", "2")
    assert capsys.readouterr().out.strip().endswith("4 streams compacted")
    for stream in [*ended, orphan, one]:
        assert Chunk.objects.filter(stream=stream).count() == 1
    assert Chunk.objects.filter(stream=live).count() == 2
    assert get_stream_body(orphan.pk).text == "left behind "
    call_command("compact_streams")
    assert capsys.readouterr().out.strip() == "0 streams compacted"


def test_expiry_compacts_the_stream_it_ends():
    from datetime import timedelta

    from django.utils import timezone

    from streaming_app.streams import expire_stale_streams

    stream = written(["half ", "a ", "reply"])
    Stream.objects.filter(pk=stream.pk).update(updated_at=timezone.now() - timedelta(seconds=600))
    assert expire_stale_streams() == 1
    assert list(Chunk.objects.filter(stream=stream).values_list("text", flat=True)) == [
        "half a reply"
    ]
    assert get_stream_body(stream.pk, 5).status == Status.TIMEOUT


async def test_the_async_twins_close_their_connections_as_channels_does():
    """Called from a consumer, a task or a worker (no request to close them at its end),
    the a… functions close the connection they used, as database_sync_to_async does."""
    from asgiref.sync import sync_to_async

    from streaming_app import (
        acancel_stream,
        acompact_stream,
        acreate_stream,
        adelete_stream,
        aget_stream_body,
    )

    @sync_to_async
    def connection_is_open() -> bool:
        return connection.connection is not None

    stream = await acreate_stream()
    assert not await connection_is_open(), "acreate_stream"
    await aget_stream_body(stream.pk)
    assert not await connection_is_open(), "aget_stream_body"
    await acancel_stream(stream.pk)
    assert not await connection_is_open(), "acancel_stream"
    await acompact_stream(stream.pk)
    assert not await connection_is_open(), "acompact_stream"
    await adelete_stream(stream.pk)
    assert not await connection_is_open(), "adelete_stream"


def deletions() -> list[tuple[str, object]]:
    """Ways to delete streams, each taking the three streams of ``owner`` (two finished,
    one live)."""
    return [
        ("queryset", lambda owner: Stream.objects.filter(owner=owner).delete()),
        ("owner", lambda owner: owner.delete()),
        ("owners", lambda owner: type(owner).objects.filter(pk=owner.pk).delete()),
    ]


@pytest.mark.parametrize(("how", "delete"), deletions(), ids=[how for how, _ in deletions()])
def test_a_deletion_locks_its_streams_in_one_query_and_stops_only_its_live_ones(
    how, delete, monkeypatch
):
    """``pre_delete`` is sent once per stream: the receiver locks them all at its first
    call (a purge of 500 streams is one lock, not 500), and has the live one's run
    stopped, not the others'."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from streaming_app import deletion

    owner = get_user_model().objects.create_user(f"deleter-{how}")
    finished = [written(["x"], status=Status.DONE) for _ in range(2)]
    live = create_stream(owner=owner)
    claim_stream(live.pk)
    Stream.objects.filter(pk__in=[s.pk for s in finished]).update(owner=owner)
    bystander = create_stream()
    claim_stream(bystander.pk)
    cancelled: list[uuid.UUID] = []
    monkeypatch.setattr(deletion, "cancel_on_commit", cancelled.append)
    with CaptureQueriesContext(connection) as queries:
        delete(owner)
    assert cancelled == [live.pk]
    assert list(Stream.objects.values_list("pk", flat=True)) == [bystander.pk]
    locks = [q["sql"] for q in queries.captured_queries if "FOR UPDATE" in q["sql"]]
    if connection.features.has_select_for_update:
        assert len(locks) == 1, locks
