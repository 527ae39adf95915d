// streaming_app's browser client: an ES module, no build step.
//
// Offsets count Unicode code points, as Python's len() does: use codePoints(), never
// String.prototype.length (UTF-16 units), to compare them.

// `status`: the HTTP status or websocket close code. `streamStatus`: how the stream
// ended, when the answer says (a drive whose run ended before its first piece: 502
// "error", 504 "timeout", 409 "cancelled"; docs/api.md), else null.
export class StreamError extends Error {
  constructor(status, message, streamStatus = null) {
    super(message);
    this.status = status;
    this.streamStatus = streamStatus;
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
    const ended = TERMINAL.has(data.status) ? data.status : null;
    return new StreamError(response.status, data.error || response.statusText, ended);
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

// Parts (docs/protocol.md, streaming_app/parts.py): a stream's body is one text; a
// stream with parts also has a part map, entries {at, type, ...} that only ever grow,
// each saying that from body offset `at` on the text belongs to a new span of a part.

const WITH_TEXT = new Set(["text", "reasoning", "tool-call"]);

// The part entry `index` of `map` belongs to: a tool call's id, else the entry itself.
export function partKey(map, index) {
  const entry = map[index];
  return entry.type === "tool-call" || entry.type === "tool-result"
    ? `call:${entry.id}`
    : `${entry.type}:${index}`;
}

function lastAtOrBefore(map, offset) {
  let lo = 0;
  let hi = map.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (map[mid].at <= offset) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

// A body's parts as its part map and its text arrive: merge() entries (by their number
// in the map), then append() the text they describe; `parts` is then what assemble()
// gives for the text appended, from body offset `offset` on. Each piece costs its own
// length, not the whole text's.
export class PartsBuilder {
  #byKey = new Map();
  #text = [];

  constructor(offset = 0) {
    this.offset = offset;
    this.length = offset; // the body offset the text appended reaches
    this.map = [];
    this.parts = [];
  }

  // Put `entries` (the first being entry number `first`) into the map; false if
  // entries before `first` are missing (a gap: nothing is merged).
  merge(first, entries) {
    if (first > this.map.length) return false;
    let redo = false;
    for (let index = first; index < first + entries.length; index++) {
      if (index < this.map.length) continue; // known: map entries never change
      const entry = entries[index - first];
      // Text already appended past an entry's start went to the span before it. Only
      // the first entry of a stream that began as plain text may (its text is the
      // plain text so far); anything else means the text came before its map.
      if (this.#text.length && entry.at < this.length
          && !(index === 0 && entry.type === "text" && entry.at === 0)) redo = true;
      this.map.push(entry);
      this.#open(index);
    }
    if (redo) this.#rebuild();
    return true;
  }

  append(text) {
    if (!text) return;
    this.#text.push(text);
    this.#distribute(text);
  }

  // The parts, copied (a caller may keep them: later pieces do not change them).
  snapshot() {
    return this.parts.map((part) => ({ ...part }));
  }

  #part(key, make) {
    let part = this.#byKey.get(key);
    if (!part) {
      part = make();
      this.#byKey.set(key, part);
      this.parts.push(part);
    }
    return part;
  }

  #open(index) {
    const entry = this.map[index];
    const key = partKey(this.map, index);
    if (entry.type === "tool-result") {
      const call = this.#part(key, () => ({ type: "tool-call", id: entry.id, name: "", arguments: "" }));
      call.result = entry.result ?? null;
    } else if (entry.type === "finish") {
      this.#part(`finish:${index}`, () => ({
        type: "finish", reason: entry.reason ?? null, usage: entry.usage || {},
      }));
    } else if (entry.type === "tool-call") {
      const call = this.#part(key, () => ({ type: "tool-call", id: entry.id, name: "", arguments: "" }));
      call.name = call.name || entry.name || ""; // named by the first entry that names it
    } else {
      this.#part(key, () => ({ type: entry.type, text: "" }));
    }
  }

  #distribute(text) {
    const chars = [...text];
    if (!this.map.length) {
      // A plain stream (so far): one text part, which a first entry
      // {"at": 0, "type": "text"} ("text:0") would go on with.
      this.#part("text:0", () => ({ type: "text", text: "" })).text += text;
      this.length += chars.length;
      return;
    }
    for (let i = 0; i < chars.length;) {
      const index = lastAtOrBefore(this.map, this.length);
      const next = index + 1 < this.map.length ? this.map[index + 1].at : Infinity;
      const taken = Math.min(chars.length - i, next - this.length);
      const entry = this.map[index];
      if (entry && WITH_TEXT.has(entry.type)) {
        const part = this.#byKey.get(partKey(this.map, index));
        const piece = chars.slice(i, i + taken).join("");
        if (entry.type === "tool-call") part.arguments += piece;
        else part.text += piece;
      }
      i += taken;
      this.length += taken;
    }
  }

  #rebuild() {
    this.#byKey.clear();
    this.parts = [];
    this.length = this.offset;
    for (let index = 0; index < this.map.length; index++) this.#open(index);
    for (const text of this.#text) this.#distribute(text);
  }
}

// The parts of a body (`text` from body offset `offset`) and its part map, as
// streaming_app.parts.assemble gives them, in the order they started:
// {type: "reasoning"|"text", text}, {type: "tool-call", id, name, arguments, result?},
// {type: "finish", reason, usage}. A plain stream (no map) is one text part.
export function assemble(text, map, offset = 0) {
  const builder = new PartsBuilder(offset);
  builder.merge(0, map || []);
  builder.append(text);
  return builder.parts;
}

// `url` with `parameter` ("parts=1") added to its query.
function withParameter(url, parameter) {
  return `${url}${url.includes("?") ? "&" : "?"}${parameter}`;
}

// Drive a stream: POST to a driving endpoint and hand each piece to onText as it
// arrives. Resolves with the whole text once the response ends. A server at its limit
// of live streams (503) or a user at theirs (429) says when to come back (Retry-After):
// the stream stays pending, and the drive is tried again then, `retries` times at most.
// onStart() is called once the server has accepted the drive (the stream is streaming).
// With `parts`, it asks for the part map too (?parts=1: one JSON message a line):
// onMap(first, entries) gets the entries each piece comes with, before onText gets the
// piece ("" when only entries came), and onStatus(status, error) the stream's status,
// the body's last line. A view that answers plain text anyway is read as plain text.
// A run that ended before its first piece rejects with a StreamError whose
// `streamStatus` says how ("error": its message is the stream's public error).
export async function drive(url, {
  onText, onStart, onMap, onStatus, parts = false, headers = {}, body, signal, retries = 5,
} = {}) {
  let response;
  for (let attempt = 0; ; attempt++) {
    response = await fetch(parts ? withParameter(url, "parts=1") : url, {
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
  if (parts && /^application\/x-ndjson\b/.test(response.headers.get("Content-Type") || "")) {
    let line = ""; // a line can be split across reads
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return text;
      line += value;
      let end;
      while ((end = line.indexOf("\n")) >= 0) {
        const message = line.slice(0, end).trim();
        line = line.slice(end + 1);
        if (!message) continue;
        const data = JSON.parse(message);
        if (data.type === "status") {
          if (onStatus) onStatus(data.status, data.error ?? null);
          continue;
        }
        const { text: piece = "", parts: entries, parts_from: first = 0 } = data;
        if (entries && onMap) onMap(first, entries);
        text += piece;
        if (onText) onText(text, piece);
      }
    }
  }
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return text;
    text += value;
    if (onText) onText(text, value);
  }
}

// Read a stream's committed body from a code point offset:
// {id, status, text, offset, length, error}, and `parts` (its whole part map) for a
// stream that has one.
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
// 1011: the server failed (a bug, logged there). It is tried again this many times,
// after a backoff, in case it was passing; then watch() gives up with a StreamError.
export const SERVER_ERROR_RETRIES = 3;
// A websocket viewer acknowledges the text it has taken (?ack=1, docs/protocol.md): the
// server sends no more than its VIEWER_BUFFER_CHARS past the last acknowledgement. One
// goes out once this many code points have come since the last, or this many
// milliseconds after text came, whichever is first: a few frames a second at most.
export const ACK_CHARS = 16384;
export const ACK_DELAY = 100;

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
// With `parts: true` it follows the part map too, through every drive, watch and
// resume: onParts(parts, map) gets the parts (see assemble()) and the map whenever
// either changes (`partMap` is the map of `text`: without it, it is read). Resolves
// with {text, status, error} (and `parts`, `map` with `parts: true`); rejects with a
// StreamError (refused, unknown, busy past `retries`) or with the signal's reason once
// `signal` aborts.
export async function follow({
  streamId,
  driveUrl,
  text = "",
  headers = {},
  body,
  signal,
  onText,
  onStatus,
  onParts,
  parts = false,
  partMap,
  urls,
  retries,
} = {}) {
  const at = streamUrls(streamId, urls);
  let whole = text;
  // The parts of `whole`; a map entry that arrived since they were last given out.
  let builder = null;
  let grew = false;
  const startParts = (map) => {
    const length = codePoints(whole);
    builder = new PartsBuilder();
    // Entries only ever grow in order of `at`: those of the text so far are a prefix.
    builder.merge(0, (map || []).filter((entry) => entry.at <= length));
    builder.append(whole);
  };
  const giveParts = () => {
    grew = false;
    if (onParts) onParts(builder.snapshot(), [...builder.map]);
  };
  if (parts) {
    if (!partMap && whole) partMap = (await readBody(at.body, codePoints(whole))).parts;
    startParts(partMap);
  }
  const merge = (first, entries) => {
    const known = builder.map.length;
    if (!builder.merge(first, entries)) return false;
    if (builder.map.length > known) grew = true;
    return true;
  };
  const append = (piece) => {
    if (piece) {
      whole += piece;
      builder?.append(piece);
      if (onText) onText(whole, piece);
    }
    if (builder && (piece || grew)) giveParts();
  };
  // What is stored replaces what the page has (after a drive whose pieces never
  // committed, or a map that cannot be followed).
  const replace = (stored) => {
    whole = stored.text;
    if (builder) startParts(stored.parts);
    if (onText) onText(whole, "");
    if (builder) giveParts();
  };
  const ended = (status, error) => (builder
    ? { text: whole, status, error, parts: builder.snapshot(), map: [...builder.map] }
    : { text: whole, status, error });

  if (driveUrl && whole === "") {
    try {
      await drive(driveUrl, {
        headers,
        body,
        signal,
        retries,
        parts,
        onStart: () => onStatus?.("streaming", null),
        onMap: (first, entries) => merge(first, entries),
        onText: (_, piece) => append(piece),
      });
    } catch (reason) {
      if (signal?.aborted) throw reason;
      const refused = reason instanceof StreamError && !WATCH_INSTEAD.has(reason.status);
      // The run ended before its first piece: the answer says how.
      if (refused && reason.streamStatus) {
        if (onStatus) onStatus(reason.streamStatus, reason.message);
        return ended(reason.streamStatus, reason.message);
      }
      // A refusal other than "watch instead" is final; a dropped connection is not.
      if (refused) throw reason;
    }
  }
  for (let reread = false; ; reread = true) {
    // Entries the map cannot take (some before them are missing: the server's map is
    // not the one this text was shown with): read the whole body again, and go on.
    let gap = false;
    const watcher = watch(at.socket, {
      offset: codePoints(whole),
      eventsUrl: at.events,
      bodyUrl: at.body,
      signal,
      parts: Boolean(builder),
      onMap: (first, entries) => {
        if (gap || merge(first, entries)) return;
        gap = true;
        watcher.close();
      },
      onText: (_, piece) => {
        if (!gap) append(piece);
      },
      onStatus,
    });
    try {
      const { status, error } = await watcher.done;
      if (!gap) return ended(status, error);
      if (reread) throw new StreamError(0, "the stream's part map does not follow on");
      replace(await readBody(at.body, 0));
    } catch (reason) {
      // Past the end of a finished stream (4400): the drive got pieces that never
      // committed (the stream ended in error). What is stored is the answer.
      if (!(reason instanceof StreamError && reason.status === 4400) || signal?.aborted) throw reason;
      const stored = await readBody(at.body, 0);
      replace(stored);
      if (onStatus) onStatus(stored.status, stored.error);
      return ended(stored.status, stored.error);
    }
    if (signal?.aborted) throw signal.reason;
  }
}

// Ask a stream to stop (url: ".../api/streams/<id>/cancel/"); resolves with
// {id, status, error, length} once it has ended, or while its writer is still stopping.
export async function cancel(url, { headers = {} } = {}) {
  const response = await fetch(url, { method: "POST", headers, credentials: "same-origin" });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}
