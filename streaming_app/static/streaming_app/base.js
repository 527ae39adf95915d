// What every module of streaming_app's browser client shares: its error, code point
// counting, backoff, the terminal statuses and a stream's URLs (client.js exports them).
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

// The StreamError a refused request answers with (its JSON's error and, for a run
// that has ended, the status it ended with).
export async function errorOf(response) {
  try {
    const data = await response.json();
    const ended = TERMINAL.has(data.status) ? data.status : null;
    return new StreamError(response.status, data.error || response.statusText, ended);
  } catch {
    return new StreamError(response.status, response.statusText);
  }
}

// Resolve after `ms` milliseconds; reject with the signal's reason once it aborts.
export function sleep(ms, signal) {
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

// The statuses of a stream that has ended.
export const TERMINAL = new Set(["done", "error", "cancelled", "timeout"]);

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
