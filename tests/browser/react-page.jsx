// A test page for streaming_app's React hook (tests/test_react.py), in StrictMode:
// ?stream=<id>[&drive=<drive url>][&parts] shows that stream's text and status (and,
// with &parts, its reasoning and its answer apart).
import React, { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { useStream } from "../../streaming_app/static/streaming_app/react.js";

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

function Reply({ streamId, driveUrl, parts }) {
  const { text, status, error, parts: shown } = useStream(streamId, {
    driveUrl,
    drive: Boolean(driveUrl),
    parts,
    headers: { "X-CSRFToken": csrfToken() },
  });
  window.__renders = (window.__renders ?? 0) + 1;
  const of = (type) => shown.filter((p) => p.type === type).map((p) => p.text).join("");
  return (
    <div>
      <pre id="text">{text}</pre>
      {parts && <pre id="reasoning">{of("reasoning")}</pre>}
      {parts && <pre id="answer">{of("text")}</pre>}
      <p id="status">{status ?? ""}</p>
      <p id="error">{error ?? ""}</p>
    </div>
  );
}

const params = new URLSearchParams(location.search);
const root = createRoot(document.getElementById("root"));
window.__unmount = () => root.unmount();
root.render(
  <StrictMode>
    <Reply streamId={params.get("stream")} driveUrl={params.get("drive")} parts={params.has("parts")} />
  </StrictMode>,
);
