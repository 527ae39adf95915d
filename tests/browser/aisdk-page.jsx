// A test page for streaming_app's AI SDK stream (tests/test_aisdk.py): the real
// useChat of @ai-sdk/react, with DefaultChatTransport and resume: true, in StrictMode.
// ?chat=<uuid> opens that chat (a new one without it). Each message's parts are shown
// apart: reasoning in .reasoning, text in .text; window.__chat is the hook's state.
// First, before the AI SDK defines its schemas (tests/test_csp.py).
import "./zod-jitless.js";
import React, { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

const transport = new DefaultChatTransport({
  api: "/api/ai/chat",
  // Read at each request: logging a guest in rotates the token.
  headers: () => ({ "X-CSRFToken": csrfToken() }),
});

// Every state the page rendered, for the test to look back on.
window.__seen = [];

function Chat({ id }) {
  const { messages, sendMessage, status, error } = useChat({ id, transport, resume: true });
  window.__send = (text) => sendMessage({ text });
  window.__chat = { id, status, error: error ? error.message : null, messages };
  const reply = messages.filter((m) => m.role === "assistant").at(-1);
  window.__seen.push({
    status,
    parts: reply ? reply.parts.filter((p) => p.text !== undefined).map((p) => [p.type, p.text.length]) : [],
  });
  return (
    <div>
      <p>useChat status: <b id="status">{status}</b></p>
      <p id="error">{error ? error.message : ""}</p>
      <ol id="messages">
        {messages.map((message) => (
          <li key={message.id} className={`message ${message.role}`} data-id={message.id}>
            {message.parts.map((part, i) =>
              part.type === "reasoning" ? (
                <section key={i}>
                  <h4>reasoning part</h4>
                  <pre className="reasoning" style={{ color: "#666", whiteSpace: "pre-wrap" }}>{part.text}</pre>
                </section>
              ) : part.type === "text" ? (
                <section key={i}>
                  <h4>text part</h4>
                  <pre className="text" style={{ whiteSpace: "pre-wrap" }}>{part.text}</pre>
                </section>
              ) : null,
            )}
          </li>
        ))}
      </ol>
    </div>
  );
}

const params = new URLSearchParams(location.search);
createRoot(document.getElementById("root")).render(
  <StrictMode>
    <Chat id={params.get("chat") ?? crypto.randomUUID()} />
  </StrictMode>,
);
