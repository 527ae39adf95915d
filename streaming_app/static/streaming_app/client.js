// streaming_app's browser client: an ES module, no build step.
//
// The browser's data path, a module each: base.js (StreamError, codePoints, backoff,
// TERMINAL, streamUrls), parts.js (the parts model: a body's text and part map as its
// parts), http.js (drive, readBody, cancel), watch.js (the websocket, else Server-Sent
// Events); follow(), here, puts them together. This module exports all of their public
// names: import them from here.
//
// Offsets count Unicode code points, as Python's len() does: use codePoints(), never
// String.prototype.length (UTF-16 units), to compare them.

import { StreamError, codePoints, streamUrls } from "./base.js";
import { drive, readBody } from "./http.js";
import { PartsBuilder } from "./parts.js";
import { watch } from "./watch.js";

export { StreamError, TERMINAL, backoff, codePoints, streamUrls } from "./base.js";
export { assemble, partKey, PartsBuilder } from "./parts.js";
export { cancel, drive, readBody } from "./http.js";
export { ACK_CHARS, ACK_DELAY, SERVER_ERROR_RETRIES, watch } from "./watch.js";

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
