// The HTTP side of streaming_app's browser client (client.js exports it): the drive
// (a POST whose answer is the text, plain or one JSON message a line), the committed
// body, and cancel.

import { backoff, errorOf, sleep } from "./base.js";

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

// Ask a stream to stop (url: ".../api/streams/<id>/cancel/"); resolves with
// {id, status, error, length} once it has ended, or while its writer is still stopping.
export async function cancel(url, { headers = {} } = {}) {
  const response = await fetch(url, { method: "POST", headers, credentials: "same-origin" });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}
