// useStream: a stream's text and status in a React component. An ES module with React
// as a peer dependency (imported as "react": a bundler, or an import map, resolves it).
//
//   const { text, status, error, cancel } = useStream(streamId, { driveUrl, drive });
//   const { parts } = useStream(streamId, { parts: true }); // reasoning, tool calls, text
//
// `drive: true` says this browser started the stream (it created it and is to
// generate it): the hook then drives it through `driveUrl`, and watches it otherwise,
// as the Convex component's hook does. Unlike that hook, a re-render or StrictMode's
// second mount never aborts the drive this browser started: follows are shared by
// stream and stopped only once no component has wanted one for a moment.

import { useCallback, useEffect, useRef, useState } from "react";
import { StreamError, cancel as cancelStream, follow, streamUrls } from "./client.js";

// How long a follow nobody listens to is kept, so that an unmount followed at once by
// a mount (StrictMode, a key change back and forth) finds it still running.
const LINGER_MS = 1000;

const follows = new Map();

function subscribe(key, options, listener) {
  let entry = follows.get(key);
  if (!entry) {
    const controller = new AbortController();
    entry = {
      listeners: new Set(),
      state: { text: "", parts: [], status: null, error: null },
      controller,
      timer: 0,
    };
    const current = entry;
    const publish = (patch) => {
      current.state = { ...current.state, ...patch };
      for (const notify of current.listeners) notify(current.state);
    };
    follows.set(key, entry);
    follow({
      ...options,
      signal: controller.signal,
      onText: (text) => publish({ text }),
      onParts: options.parts ? (parts) => publish({ parts }) : undefined,
      onStatus: (status, error) => publish({ status, error }),
    }).then(
      ({ text, status, error, parts }) => publish({ text, status, error, ...(parts && { parts }) }),
      (reason) => {
        if (controller.signal.aborted) return;
        publish({ error: reason instanceof StreamError ? reason.message : String(reason) });
      },
    );
  }
  clearTimeout(entry.timer);
  entry.listeners.add(listener);
  listener(entry.state);
  const kept = entry;
  return () => {
    kept.listeners.delete(listener);
    if (kept.listeners.size) return;
    kept.timer = setTimeout(() => {
      if (kept.listeners.size) return;
      kept.controller.abort();
      if (follows.get(key) === kept) follows.delete(key);
    }, LINGER_MS);
  };
}

const NOTHING = { text: "", parts: [], status: null, error: null };

export function useStream(streamId, {
  driveUrl = null, drive = false, parts = false, headers, urls,
} = {}) {
  const options = useRef({ headers, urls });
  options.current = { headers, urls };
  const driving = drive && driveUrl ? driveUrl : null;
  const key = streamId ? `${streamId}\n${driving ?? ""}\n${parts ? "parts" : ""}` : null;
  // The state of the stream it was for: another stream's never shows, not even for
  // the render before the effect below has run.
  const [state, setState] = useState({ key: null, ...NOTHING });

  useEffect(() => {
    if (!key) return undefined;
    return subscribe(
      key,
      { streamId, driveUrl: driving, parts, ...options.current },
      (current) => setState({ key, ...current }),
    );
  }, [key]);

  const cancel = useCallback(
    () => cancelStream(streamUrls(streamId, options.current.urls).cancel, {
      headers: options.current.headers,
    }),
    [streamId],
  );
  const { text, status, error, parts: shown } = state.key === key && key ? state : NOTHING;
  return { text, parts: shown, status, error, cancel };
}
