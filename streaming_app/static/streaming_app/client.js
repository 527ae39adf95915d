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
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
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
export async function drive(url, { onText, headers = {}, body, signal, retries = 5 } = {}) {
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

const TERMINAL = new Set(["done", "error", "cancelled", "timeout"]);
// Close codes after which coming back would not help: a bad request, forbidden, unknown.
const REFUSED = new Set([4400, 4403, 4404]);

// Watch a stream over a websocket (url: ".../ws/streams/<id>/"), from a code point
// offset, until it ends. If the connection drops (or the server says 4503, try again;
// 4429, too many viewers), it reconnects after a backoff with jitter and resumes
// exactly where it was. onText(text, piece) gets the text from `offset` so far;
// onStatus(status, error) each status. Returns {done, close}: `done` resolves with
// {text, status, error} when the stream has ended, or rejects with the close code if
// the server refused (4400, 4403, 4404).
export function watch(url, { offset = 0, onText, onStatus } = {}) {
  let text = "";
  let length = offset;
  let status = null;
  let error = null;
  let socket = null;
  let stopped = false;
  let settle;
  const done = new Promise((resolve, reject) => { settle = { resolve, reject }; });

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

  let attempt = 0;
  function connect() {
    socket = new WebSocket(`${url}?offset=${length}`);
    socket.onopen = () => { attempt = 0; };
    socket.onmessage = (event) => take(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (stopped || event.code === 1000 || TERMINAL.has(status)) {
        settle.resolve({ text, status, error });
      } else if (REFUSED.has(event.code)) {
        settle.reject(new StreamError(event.code, event.reason || `closed with ${event.code}`));
      } else {
        // Dropped, or come back later (4503, 4429): resume from where we are.
        setTimeout(connect, backoff(attempt++));
      }
    };
  }

  connect();
  return {
    done,
    close() {
      stopped = true;
      if (socket) socket.close();
    },
  };
}

// Ask a stream to stop (url: ".../api/streams/<id>/cancel/"); resolves with
// {id, status, error, length} once it has ended, or while its writer is still stopping.
export async function cancel(url, { headers = {} } = {}) {
  const response = await fetch(url, { method: "POST", headers, credentials: "same-origin" });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}
