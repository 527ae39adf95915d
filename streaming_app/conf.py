"""The ``STREAMING_APP`` setting: one dict merged over documented defaults.

Values are read on every use, never cached at import, so ``override_settings`` works
in tests and a project may change them without restarting anything but the process.
Bad values are reported by the system checks in :mod:`streaming_app.checks`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Flush policy (docs/flush-policy.md; bench/flush_policy.py measured these).
    # A flush happens once MIN_FLUSH_INTERVAL has passed since the last one and the
    # buffer ends a sentence or a line; or once MAX_FLUSH_INTERVAL has passed since the
    # oldest unflushed piece arrived, punctuation or not; or as soon as the buffer holds
    # MAX_BUFFER_CHARS; and always at the end.
    "MIN_FLUSH_INTERVAL": 0.25,
    "MAX_FLUSH_INTERVAL": 0.5,
    "MAX_BUFFER_CHARS": 4096,
    # Text a stream may hold in memory that is not yet in the database, or not yet
    # read by the driving browser. Past it the generator waits (the database) or the
    # driving response is abandoned (a browser that stopped reading).
    "MAX_PENDING_CHARS": 1_000_000,
    # A live writer touches its stream at least this often, even when the model is
    # silent, so that it is not mistaken for a dead one.
    "HEARTBEAT_INTERVAL": 5.0,
    # A streaming stream with no activity for this long is `timeout` (its writer died).
    "TIMEOUT": 60.0,
    # A pending stream nobody has driven for this long is `timeout`. None: it waits for
    # its driver for ever (it has no writer to die; its owner may come back later).
    "PENDING_TIMEOUT": None,
    # A writer whose flush has failed, or has not come back, for this long (the database
    # is away) stops its generator and ends the stream as `error` as soon as that can
    # be written.
    "DATABASE_OUTAGE_LIMIT": 30.0,
    # How long the cancel endpoint waits for the writer to end the stream.
    "CANCEL_WAIT": 2.0,
    # When the driving browser hangs up: False lets generation go on to the end, True
    # stops it; or a callable (or its dotted path) taking (user, stream) and returning
    # a bool, for some drivers only (anonymous visitors: streaming_app.permissions.
    # anonymous_cancels_on_disconnect). Called on the event loop: no database queries.
    "CANCEL_ON_DISCONNECT": False,
    # A viewer that hears nothing for this long reads the stream from the database,
    # in case a message was dropped (channel layers deliver at most once).
    "RESYNC_INTERVAL": 3.0,
    # How long one call to the channel layer may wait: publishing an update or a control
    # message, a hub's joining or leaving a stream's group, opening its channel. Past
    # it the call is given up as if the layer had refused it: viewers follow from the
    # database meanwhile (RESYNC_INTERVAL), and the joins are tried again.
    "PUBLISH_TIMEOUT": 2.0,
    # Seconds between keep-alive comments on an idle Server-Sent Events response.
    "SSE_KEEPALIVE": 15.0,
    # Durable Streams (docs/protocol.md#durable-streams): how long a long-poll waits for
    # text before its 204, and how long a live=sse response lasts before the client
    # reconnects from its offset (PROTOCOL.md §10.2: so that a CDN can collapse them).
    "LONG_POLL_TIMEOUT": 20.0,
    "SSE_MAX_AGE": 60.0,
    # The largest body one Durable Streams PUT or POST may carry: past it, 413.
    "MAX_APPEND_BYTES": 1_048_576,
    # Threads that run the database work of all writers in a process. The writers of a
    # process commit together, one transaction per tick, so they need few (and as many
    # database connections at the most).
    "WRITER_THREADS": 4,
    # The least time between two transactions of a process's writers: flushes of
    # different streams that fall due within it share one transaction.
    "FLUSH_TICK": 0.05,
    # Merge a stream's chunks into one when it ends, so that reading a finished stream
    # fetches one row. Costs one more transaction per stream, after it has ended.
    "COMPACT_FINISHED": True,
    # Who may do what: a callable (or its dotted path) taking (user, stream, action),
    # action being "read", "drive" or "cancel", and returning a bool.
    "PERMISSION_POLICY": "streaming_app.permissions.owner_policy",
    # The words a reader sees when a stream ends in error: a callable (or its dotted
    # path) taking the exception and returning a short public message. The exception
    # itself goes to the log. See streaming_app.errors.
    "ERROR_MESSAGE": "streaming_app.errors.default_error_message",
    # Load is refused, never failed (docs/deployment.md#capacity): past this many live
    # streams driven by one process, a drive gets 503 with Retry-After; past this many
    # live streams of one user, 429. None: no limit. The stream stays pending.
    "MAX_LIVE_STREAMS": 100,
    "MAX_LIVE_STREAMS_PER_USER": 3,
    # Admission (docs/deployment.md#limits-and-quotas): drives admitted per user and per
    # client address, as rate strings ("10/m", "100/h", "5/2m", or the limits library's
    # "10 per minute"); past one, 429 with Retry-After until its window frees, the stream
    # stays pending. Counted on the Django cache RATE_LIMIT_CACHE (shared by every
    # process when it is Redis, Memcached or the database's). None or (): no limit.
    "DRIVE_RATES_PER_USER": ("10/m", "100/h"),
    "DRIVE_RATES_PER_ADDRESS": ("30/m", "300/h"),
    # Tokens a user, or a client address, may use a day (the model's reported usage,
    # else the reply's characters / 4): past it, drives get 429 until the day's window
    # frees. A drive admitted under it runs to its end. None: no quota.
    "DAILY_TOKENS_PER_USER": 200_000,
    "DAILY_TOKENS_PER_ADDRESS": 1_000_000,
    # An address whose forwarding headers the server did not apply (a proxy it was not
    # told to trust: all its visitors are one address; or a client that made them up)
    # gets the per-address rates and quota multiplied by this. 1: the address's own
    # limits and count (a client gains nothing by inventing a header; a misconfigured
    # proxy is refused as one client, with a warning that names the fix).
    # None: no per-address limits for such an address.
    "PROXY_ADDRESS_FACTOR": 1,
    # The alias in CACHES the limits are counted in.
    "RATE_LIMIT_CACHE": "default",
    # Seconds a check waits for that cache: past it, or if the cache fails, the request
    # is admitted (fail open) and a warning logged.
    "RATE_LIMIT_TIMEOUT": 1.0,
    # Seconds a refused drive or viewer is told to wait (Retry-After).
    "RETRY_AFTER": 5,
    # A run that goes on longer than this many seconds, or past this many characters,
    # is stopped: the stream ends `error`, its text kept. None: no limit.
    "MAX_DURATION": 900.0,
    "MAX_LENGTH": 1_000_000,
    # Websocket and Server-Sent Events viewers one user (or anonymous session) may hold
    # open on one process: past it, close 4429 or HTTP 429.
    "MAX_VIEWERS_PER_USER": 20,
    # Viewers from one client address may hold open on one process, whoever they are
    # (users, guests, sessions and session-less visitors together): guests minted for
    # free multiply MAX_VIEWERS_PER_USER, an address does not. Past it, close 4429 or
    # HTTP 429. 100: an office or school behind one NAT address, a tab or two each on
    # a shared link (docs/deployment.md#viewers-per-address). None: no limit.
    "MAX_VIEWERS_PER_ADDRESS": 100,
    # Viewers whose address is a proxy's (forwarding headers the server did not apply:
    # its proxy settings are missing, docs/deployment.md#proxies) may hold this many
    # open on one process, all of them together (users, guests and anonymous ones), in
    # place of MAX_VIEWERS_PER_ADDRESS; a client that adds such headers itself is
    # bounded by it too. None: no limit.
    "MAX_VIEWERS_PER_PROXY": 500,
    # Characters of frames waiting to be written to one viewer: past it the viewer is
    # cut loose and catches up from the database when it reads again.
    "VIEWER_BUFFER_CHARS": 262_144,
    # Where the server's writes never wait for a client that stopped reading (daphne),
    # a viewer that does not acknowledge (Server-Sent Events; a websocket without
    # ?ack=1) is sent VIEWER_BUFFER_CHARS at most per connection: then the connection
    # ends (websocket close 4413, SSE the end of the response) and the client resumes
    # from its offset on a new one. Off: such viewers are sent everything.
    "LIMIT_UNACKED_VIEWERS": False,
}


def get(name: str) -> Any:
    """Return the value of one ``STREAMING_APP`` key, or its default."""
    if name not in DEFAULTS:
        raise KeyError(f"streaming_app has no setting {name!r}")
    user: dict[str, Any] = getattr(settings, "STREAMING_APP", None) or {}
    return user.get(name, DEFAULTS[name])
