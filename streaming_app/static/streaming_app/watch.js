// Watching a stream, in streaming_app's browser client (client.js exports it): over a
// websocket that acknowledges what it takes, else over Server-Sent Events, resuming
// exactly after every drop.

import { StreamError, TERMINAL, backoff } from "./base.js";
import { readBody } from "./http.js";

// Close codes after which coming back would not help: a bad request, forbidden, unknown.
const REFUSED = new Set([4400, 4403, 4404]);
// A websocket that fails to open this many times in a row is taken for a network
// that does not carry websockets: watch() goes on over Server-Sent Events instead.
const SOCKET_FAILURES_BEFORE_SSE = 2;
// 1011: the server failed (a bug, logged there). It is tried again this many times,
// after a backoff, in case it was passing; then watch() gives up with a StreamError.
export const SERVER_ERROR_RETRIES = 3;
// A websocket viewer acknowledges the text it has taken (?ack=1, docs/protocol.md): the
// server sends no more than its VIEWER_BUFFER_CHARS past the last acknowledgement. One
// goes out once this many code points have come since the last, or this many
// milliseconds after text came, whichever is first: a few frames a second at most.
export const ACK_CHARS = 16384;
export const ACK_DELAY = 100;

// Watch a stream over a websocket (url: ".../ws/streams/<id>/"), from a code point
// offset, until it ends. It acknowledges the text it takes (?ack=1: see ACK_CHARS), so
// that the server never sends it more than a window ahead. If the connection drops (or
// the server says 4503, try again; 4429, too many viewers; 4413, a window sent
// unacknowledged), it reconnects after a backoff with jitter and resumes exactly where
// it was (a 1011, the server failing, only SERVER_ERROR_RETRIES times); where
// websockets cannot open at all and `eventsUrl` is given,
// it goes on over Server-Sent Events (`bodyUrl` then tells it why one was refused).
// onText(text, piece) gets the text from `offset` so far; onStatus(status, error) each
// status. With `parts` it asks for the part map too (?parts=1): onMap(first, entries)
// gets the entries each message comes with, before onText gets its text (with piece
// "" when the message brought entries and no new text). Returns {done, close}: `done` resolves with {text, status, error} when the
// stream has ended (or close() was called), or rejects with a StreamError if the
// server refused (4400, 4403, 4404 or the HTTP equivalent) or kept failing (1011), or with the signal's
// reason once `signal` aborts.
export function watch(url, {
  offset = 0, onText, onStatus, onMap, parts = false, signal, eventsUrl, bodyUrl,
} = {}) {
  const query = () => `?offset=${length}${parts ? "&parts=1" : ""}`;
  let text = "";
  let acked = offset;
  let ackTimer = null;
  let length = offset;
  let status = null;
  let error = null;
  let socket = null;
  let source = null;
  let timer = null;
  let stopped = false;
  let settle;
  const done = new Promise((resolve, reject) => { settle = { resolve, reject }; });

  function stop() {
    stopped = true;
    clearTimeout(timer);
    clearTimeout(ackTimer);
    signal?.removeEventListener("abort", aborted);
    if (socket) socket.close();
    if (source) source.close();
  }

  function finish() {
    stop();
    settle.resolve({ text, status, error });
  }

  function fail(reason) {
    stop();
    settle.reject(reason);
  }

  function take(message) {
    if (message.type === "status") {
      status = message.status;
      error = message.error;
      if (onStatus) onStatus(status, error);
      return;
    }
    const entries = parts ? message.parts : undefined;
    if (entries && onMap) onMap(message.parts_from ?? 0, entries);
    const chars = [...message.text];
    // Append what starts at our length; keep only the new part of an overlap.
    if (message.offset > length || message.offset + chars.length <= length) {
      if (entries && onText) onText(text, "");
      return;
    }
    const piece = chars.slice(length - message.offset).join("");
    text += piece;
    length += chars.length - (length - message.offset);
    if (onText) onText(text, piece);
  }

  // Tell the server what this socket has taken, so that it goes on sending.
  function acknowledge() {
    clearTimeout(ackTimer);
    ackTimer = null;
    if (length > acked && socket?.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "ack", offset: length }));
      acked = length;
    }
  }

  function later(again) {
    timer = setTimeout(again, backoff(attempt++));
  }

  let attempt = 0;
  let unopened = 0;
  let serverErrors = 0;
  function connect() {
    if (stopped) return;
    let opened = false;
    clearTimeout(ackTimer);
    ackTimer = null;
    acked = length; // a new socket's window starts where it resumes
    try {
      socket = new WebSocket(`${url}${query()}&ack=1`);
    } catch {
      if (eventsUrl) return followEvents();
      return fail(new StreamError(0, "this browser cannot open a websocket"));
    }
    socket.onopen = () => { opened = true; unopened = 0; };
    socket.onmessage = (event) => {
      // Only a message shows the server took us: it accepts a socket before it
      // refuses it (4503, 4429), and a refusal must not reset the backoff.
      attempt = 0;
      take(JSON.parse(event.data));
      if (length - acked >= ACK_CHARS) acknowledge();
      else if (length > acked && ackTimer === null) ackTimer = setTimeout(acknowledge, ACK_DELAY);
    };
    socket.onclose = (event) => {
      if (stopped) return;
      if (event.code === 1000 || TERMINAL.has(status)) {
        finish();
      } else if (REFUSED.has(event.code)) {
        fail(new StreamError(event.code, event.reason || `closed with ${event.code}`));
      } else if (event.code === 1011 && ++serverErrors > SERVER_ERROR_RETRIES) {
        fail(new StreamError(1011, `the server failed (${event.reason || "internal error"})`));
      } else if (!opened && eventsUrl && ++unopened >= SOCKET_FAILURES_BEFORE_SSE) {
        followEvents();
      } else {
        // Dropped, or come back later (4503, 4429): resume from where we are.
        later(connect);
      }
    };
  }

  // Server-Sent Events: EventSource reconnects by itself and resumes with
  // Last-Event-ID; when it gives up (the server refused, or answered 204 because the
  // stream had ended), the body says why.
  function followEvents() {
    if (stopped) return;
    source = new EventSource(`${eventsUrl}${query()}`, { withCredentials: true });
    source.onopen = () => { attempt = 0; };
    source.addEventListener("text", (event) => take(JSON.parse(event.data)));
    source.addEventListener("status", (event) => {
      take(JSON.parse(event.data));
      if (TERMINAL.has(status)) finish();
    });
    source.onerror = () => {
      if (stopped || source.readyState !== EventSource.CLOSED) return;
      if (!bodyUrl) return later(followEvents);
      readBody(bodyUrl, length).then((body) => {
        if (stopped) return;
        take({ type: "text", offset: body.offset, text: body.text, parts_from: 0, parts: body.parts });
        if (TERMINAL.has(body.status)) {
          take({ type: "status", status: body.status, error: body.error });
          finish();
        } else {
          later(followEvents);
        }
      }, (reason) => {
        if (stopped) return;
        if (reason instanceof StreamError && reason.status >= 400 && reason.status < 500
            && reason.status !== 429) fail(reason);
        else later(followEvents);
      });
    };
  }

  function aborted() {
    if (!stopped) fail(signal.reason);
  }
  if (signal?.aborted) {
    fail(signal.reason);
  } else {
    signal?.addEventListener("abort", aborted, { once: true });
    if (typeof WebSocket === "undefined" && eventsUrl) followEvents();
    else connect();
  }
  return {
    done,
    close() {
      if (!stopped) finish();
    },
  };
}
