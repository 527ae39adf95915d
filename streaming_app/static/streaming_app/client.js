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

// Drive a stream: POST to a driving endpoint and hand each piece to onText as it
// arrives. Resolves with the whole text once the response ends.
export async function drive(url, { onText, headers = {}, body, signal } = {}) {
  const response = await fetch(url, {
    method: "POST",
    headers,
    body,
    signal,
    credentials: "same-origin",
  });
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

// Watch a stream over a websocket (url: ".../ws/streams/<id>/"), from a code point
// offset, until it ends. If the connection drops, it reconnects and resumes exactly
// where it was. onText(text, piece) gets the text from `offset` so far; onStatus(status,
// error) each status. Returns {done, close}: `done` resolves with {text, status, error}
// when the stream has ended, or rejects with the close code if the server refused.
export function watch(url, { offset = 0, onText, onStatus, retryDelay = 1000 } = {}) {
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

  function connect() {
    socket = new WebSocket(`${url}?offset=${length}`);
    socket.onmessage = (event) => take(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (stopped || event.code === 1000) {
        settle.resolve({ text, status, error });
      } else if (event.code >= 4400 && event.code < 4500) {
        // Refused (bad offset, forbidden, unknown): retrying would not help. Anything
        // else (a dropped connection, 4503 try again) reconnects.
        settle.reject(new StreamError(event.code, event.reason || `closed with ${event.code}`));
      } else {
        setTimeout(connect, retryDelay); // dropped: resume from where we are
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
