// streaming_app's browser client: an ES module, no build step.
//
// Offsets count Unicode code points, as Python's len() does: use codePoints(), never
// String.prototype.length (UTF-16 units), to compare them.

export class StreamError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function codePoints(text) {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

async function errorOf(response) {
  try {
    const data = await response.json();
    return new StreamError(response.status, data.error || response.statusText);
  } catch {
    return new StreamError(response.status, response.statusText);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const aborted = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", aborted);
      resolve();
    }, ms);
    signal?.addEventListener("abort", aborted, { once: true });
  });
}

// How long to wait before attempt `attempt` (0, 1, 2...): exponential, capped, with
// full jitter, so that many clients coming back do not all come back at once.
export function backoff(attempt, { base = 500, cap = 15000 } = {}) {
  return Math.random() * Math.min(cap, base * 2 ** attempt);
}

// Drive a stream: POST to a driving endpoint and hand each piece to onText as it
// arrives. Resolves with the whole text once the response ends. A server at its limit
// of live streams (503) or a user at theirs (429) says when to come back (Retry-After):
// the stream stays pending, and the drive is tried again then, `retries` times at most.
// onStart() is called once the server has accepted the drive (the stream is streaming).
export async function drive(url, { onText, onStart, headers = {}, body, signal, retries = 5 } = {}) {
  let response;
  for (let attempt = 0; ; attempt++) {
    response = await fetch(url, {
      method: "POST",
      headers,
      body,
      signal,
      credentials: "same-origin",
    });
    const busy = response.status === 429 || response.status === 503;
    if (!busy || attempt >= retries) break;
    const seconds = Number(response.headers.get("Retry-After"));
    await sleep(Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : backoff(attempt), signal);
  }
  if (!response.ok) throw await errorOf(response);
  if (onStart) onStart();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return text;
    text += value;
    if (onText) onText(text, value);
  }
}

// Read a stream's committed body from a code point offset:
// {id, status, text, offset, length, error}.
export async function readBody(url, offset = 0) {
  const response = await fetch(`${url}?offset=${offset}`, { credentials: "same-origin" });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

export const TERMINAL = new Set(["done", "error", "cancelled", "timeout"]);
// Close codes after which coming back would not help: a bad request, forbidden, unknown.
const REFUSED = new Set([4400, 4403, 4404]);
// A websocket that fails to open this many times in a row is taken for a network
// that does not carry websockets: watch() goes on over Server-Sent Events instead.
const SOCKET_FAILURES_BEFORE_SSE = 2;

// The URLs of a stream where the app is mounted at `api` (HTTP) and `ws` (websocket
// routes): its body, its events (SSE), its cancel endpoint and its websocket. Whole
// URLs given as `body`, `events`, `cancel` or `socket` win (a socket path is on this
// page's host).
export function streamUrls(streamId, { api = "/api/streams/", ws = "/ws/streams/", ...given } = {}) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const onHost = (url) => (/^wss?:/.test(url) ? url : `${scheme}//${location.host}${url}`);
  const urls = {
    body: `${api}${streamId}/`,
    events: `${api}${streamId}/events/`,
    cancel: `${api}${streamId}/cancel/`,
    socket: `${ws}${streamId}/`,
  };
  for (const name of Object.keys(urls)) if (given[name]) urls[name] = given[name];
  urls.socket = onHost(urls.socket);
  return urls;
}

// Watch a stream over a websocket (url: ".../ws/streams/<id>/"), from a code point
// offset, until it ends. If the connection drops (or the server says 4503, try again;
// 4429, too many viewers), it reconnects after a backoff with jitter and resumes
// exactly where it was; where websockets cannot open at all and `eventsUrl` is given,
// it goes on over Server-Sent Events (`bodyUrl` then tells it why one was refused).
// onText(text, piece) gets the text from `offset` so far; onStatus(status, error) each
// status. Returns {done, close}: `done` resolves with {text, status, error} when the
// stream has ended (or close() was called), or rejects with a StreamError if the
// server refused (4400, 4403, 4404 or the HTTP equivalent), or with the signal's
// reason once `signal` aborts.
export function watch(url, { offset = 0, onText, onStatus, signal, eventsUrl, bodyUrl } = {}) {
  let text = "";
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
    const chars = [...message.text];
    // Append what starts at our length; keep only the new part of an overlap.
    if (message.offset > length || message.offset + chars.length <= length) return;
    const piece = chars.slice(length - message.offset).join("");
    text += piece;
    length += chars.length - (length - message.offset);
    if (onText) onText(text, piece);
  }

  function later(again) {
    timer = setTimeout(again, backoff(attempt++));
  }

  let attempt = 0;
  let unopened = 0;
  function connect() {
    if (stopped) return;
    let opened = false;
    try {
      socket = new WebSocket(`${url}?offset=${length}`);
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
    };
    socket.onclose = (event) => {
      if (stopped) return;
      if (event.code === 1000 || TERMINAL.has(status)) {
        finish();
      } else if (REFUSED.has(event.code)) {
        fail(new StreamError(event.code, event.reason || `closed with ${event.code}`));
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
    source = new EventSource(`${eventsUrl}?offset=${length}`, { withCredentials: true });
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
        take({ type: "text", offset: body.offset, text: body.text });
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

// Answers to a drive after which this browser watches instead: someone else drives
// the stream, or it has already run (409); this user may read it but not drive it (403).
const WATCH_INSTEAD = new Set([403, 409]);

// Follow one stream to its end, the right way for this browser: drive it when given
// `driveUrl` (the POST that generates it) and it is still to be driven, and otherwise
// watch it. If the drive is refused with 409 or 403, or its connection drops, it goes
// on watching from the exact code point it reached: no gap, no repeat. The final
// status is learnt after the text (an "error" or "cancelled" is never taken for
// "done"). `text` is what the page shows already (the committed text from 0, as the
// template tag renders it); `urls` is where the app is mounted (see streamUrls).
// onText(text, piece) gets the whole text so far; onStatus(status, error) each status.
// Resolves with {text, status, error}; rejects with a StreamError (refused, unknown,
// busy past `retries`) or with the signal's reason once `signal` aborts.
export async function follow({
  streamId,
  driveUrl,
  text = "",
  headers = {},
  body,
  signal,
  onText,
  onStatus,
  urls,
  retries,
} = {}) {
  const at = streamUrls(streamId, urls);
  let whole = text;
  const append = (piece) => {
    if (!piece) return;
    whole += piece;
    if (onText) onText(whole, piece);
  };
  if (driveUrl && whole === "") {
    try {
      await drive(driveUrl, {
        headers,
        body,
        signal,
        retries,
        onStart: () => onStatus?.("streaming", null),
        onText: (_, piece) => append(piece),
      });
    } catch (reason) {
      if (signal?.aborted) throw reason;
      // A refusal other than "watch instead" is final; a dropped connection is not.
      if (reason instanceof StreamError && !WATCH_INSTEAD.has(reason.status)) throw reason;
    }
  }
  const watcher = watch(at.socket, {
    offset: codePoints(whole),
    eventsUrl: at.events,
    bodyUrl: at.body,
    signal,
    onText: (_, piece) => append(piece),
    onStatus,
  });
  try {
    const { status, error } = await watcher.done;
    return { text: whole, status, error };
  } catch (reason) {
    // Past the end of a finished stream (4400): the drive got pieces that never
    // committed (the stream ended in error). What is stored is the answer.
    if (!(reason instanceof StreamError && reason.status === 4400) || signal?.aborted) throw reason;
    const stored = await readBody(at.body, 0);
    whole = stored.text;
    if (onText) onText(whole, "");
    if (onStatus) onStatus(stored.status, stored.error);
    return { text: whole, status: stored.status, error: stored.error };
  }
}

// Ask a stream to stop (url: ".../api/streams/<id>/cancel/"); resolves with
// {id, status, error, length} once it has ended, or while its writer is still stopping.
export async function cancel(url, { headers = {} } = {}) {
  const response = await fetch(url, { method: "POST", headers, credentials: "same-origin" });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}
