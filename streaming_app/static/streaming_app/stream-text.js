// <stream-text>: a stream's text, followed live: an ES module, no build step.
//
// {% load streaming %}{% stream_text stream %} renders it with the committed text inside
// (a page without JavaScript shows that), and this element follows the stream from
// there to its end: it drives the stream when given `drive-url` and the stream is
// still pending, and watches it otherwise (see follow() in client.js). It stops when
// it is removed from the page (htmx swaps included) and starts again, from what it
// shows, when it is put back.
//
// Attributes: stream-id; offset and status (what the server rendered); error;
// body-url, events-url, cancel-url, socket-url (where the app is mounted; by default
// /api/streams/<id>/... and /ws/streams/<id>/); drive-url; csrf-token (for the drive
// and cancel POSTs; by default the csrftoken cookie); markdown (render as Markdown,
// safely, as it streams).
// Properties: text, status, error; cancel(). Events (bubbling): "stream-text" on each
// piece, "stream-status" on each status ({status, error} in detail), "stream-end" once.

import { StreamError, TERMINAL, codePoints, follow, readBody, streamUrls } from "./client.js";

function cookie(name) {
  const match = document.cookie.match(new RegExp(`(?:^|;\\s*)${name}=([^;]+)`));
  return match ? decodeURIComponent(match[1]) : "";
}

export class StreamTextElement extends HTMLElement {
  #controller = null;
  #text = "";
  #status = null;
  #error = null;
  #body = null;
  #statusLine = null;
  #markdown = null;
  #frame = 0;
  #endSent = false;

  get text() { return this.#text; }
  get status() { return this.#status; }
  get error() { return this.#error; }
  get streamId() { return this.getAttribute("stream-id"); }

  #urls() {
    const given = {};
    for (const name of ["body", "events", "cancel", "socket"]) {
      const value = this.getAttribute(`${name}-url`);
      if (value) given[name] = value;
    }
    return streamUrls(this.streamId, given);
  }

  #headers() {
    // The cookie first: it is current even after a login in another tab rotated the
    // token the page was rendered with.
    return { "X-CSRFToken": cookie("csrftoken") || this.getAttribute("csrf-token") || "" };
  }

  async connectedCallback() {
    this.#controller?.abort();
    const controller = new AbortController();
    this.#controller = controller;
    const { signal } = controller;
    this.#body = this.querySelector(".stream-text-body");
    if (!this.#body) {
      this.#body = document.createElement("div");
      this.#body.className = "stream-text-body";
      this.prepend(this.#body);
    }
    this.#statusLine = this.querySelector(".stream-text-status");
    if (!this.#statusLine) {
      this.#statusLine = document.createElement("div");
      this.#statusLine.className = "stream-text-status";
      this.#statusLine.setAttribute("role", "status");
      this.append(this.#statusLine);
    }
    if (this.#markdown === null && this.hasAttribute("markdown")) {
      const { MarkdownView } = await import("./markdown.js");
      if (signal.aborted) return; // removed (or moved) meanwhile: that run is the one
      this.#markdown ??= new MarkdownView(this.#body);
    }
    let offset;
    if (this.#status === null) {
      // The first run: what the server rendered.
      this.#text = this.#body.textContent;
      this.#status = this.getAttribute("status") || "pending";
      this.#error = this.getAttribute("error");
      offset = Number(this.getAttribute("offset") ?? codePoints(this.#text));
    } else {
      // Put back after a removal: on from what it shows.
      offset = codePoints(this.#text);
    }
    this.#run(signal, offset).catch((reason) => {
      if (signal.aborted) return;
      this.#error = reason.message;
      this.#showStatus();
      this.#ended();
    });
  }

  disconnectedCallback() {
    this.#controller?.abort();
    this.#controller = null;
  }

  async #run(signal, offset) {
    // HTML turns "\r\n" into "\n": where the page's text is not the stream's, read it.
    if (codePoints(this.#text) !== offset) {
      const body = await readBody(this.#urls().body, 0);
      if (signal.aborted) return;
      this.#text = [...body.text].slice(0, offset).join("");
    }
    this.#show();
    this.#showStatus();
    if (TERMINAL.has(this.#status)) return this.#ended();
    const driveUrl = this.#status === "pending" ? this.getAttribute("drive-url") : null;
    const result = await follow({
      streamId: this.streamId,
      driveUrl,
      text: this.#text,
      urls: this.#urls(),
      headers: this.#headers(),
      signal,
      onText: (text, piece) => {
        // Usually the piece extends what is shown; after a failed drive the stored
        // text replaces it.
        const extended = text.length === this.#text.length + piece.length;
        this.#text = text;
        this.#show(extended ? piece : null);
        this.dispatchEvent(new CustomEvent("stream-text", { bubbles: true, detail: { piece } }));
      },
      onStatus: (status, error) => {
        this.#status = status;
        this.#error = error;
        this.#showStatus();
      },
    });
    this.#status = result.status;
    this.#error = result.error;
    this.#showStatus();
    this.#ended();
  }

  #ended() {
    if (this.#endSent) return;
    this.#endSent = true;
    this.dispatchEvent(new CustomEvent("stream-end", {
      bubbles: true, detail: { status: this.#status, error: this.#error, text: this.#text },
    }));
  }

  #show(piece = null) {
    if (!this.#markdown) {
      const node = this.#body.firstChild;
      if (piece !== null && node && node === this.#body.lastChild
          && node.nodeType === Node.TEXT_NODE) {
        node.appendData(piece); // not the whole text again for every piece
      } else {
        this.#body.textContent = this.#text;
      }
      return;
    }
    // Markdown is rendered at most once a frame, however fast pieces arrive.
    if (this.#frame) return;
    this.#frame = requestAnimationFrame(() => {
      this.#frame = 0;
      this.#body.style.whiteSpace = "normal";
      if (!this.#body.querySelector(":scope > .markdown-block")) this.#body.textContent = "";
      this.#markdown.render(this.#text);
    });
  }

  #showStatus() {
    this.setAttribute("status", this.#status);
    this.#statusLine.textContent = this.#error ? `${this.#status}: ${this.#error}` : this.#status;
    this.dispatchEvent(new CustomEvent("stream-status", {
      bubbles: true, detail: { status: this.#status, error: this.#error },
    }));
  }

  // Ask the stream to stop (the policy decides who may: by default its owner).
  async cancel() {
    const response = await fetch(this.#urls().cancel, {
      method: "POST", headers: this.#headers(), credentials: "same-origin",
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new StreamError(response.status, data.error || response.statusText);
    }
    return response.json();
  }
}

if (!customElements.get("stream-text")) customElements.define("stream-text", StreamTextElement);
