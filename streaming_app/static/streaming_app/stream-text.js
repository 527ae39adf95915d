// <stream-text>: a stream's text, followed live: an ES module, no build step.
//
// {% load streaming %}{% stream_text stream %} renders it with the committed text inside
// (a page without JavaScript shows that), and this element follows the stream from
// there to its end: it drives the stream when given `drive-url` and the stream is
// still pending, and watches it otherwise (see follow() in client.js). It stops when
// it is removed from the page (htmx swaps included) and starts again, from what it
// shows, when it is put back.
//
// A stream with parts (reasoning, tool calls: streaming_app.parts) shows each part in
// order: reasoning in a closed <details class="stream-reasoning">, a tool call in a
// closed <details class="stream-tool-call"> (its name, arguments and result, as text),
// text as a plain stream's (Markdown with `markdown`). The server renders them the same
// way (streaming_app/render.py: tests/test_markup.py checks that both give the same
// DOM), with the part map in `part-map`; the element always asks for parts, so a plain
// stream that turns into one mid-way is shown as one.
//
// Attributes: stream-id; offset and status (what the server rendered); error;
// part-map (the map of the text rendered, for a stream with parts); body-url,
// events-url, cancel-url, socket-url (where the app is mounted; by default
// /api/streams/<id>/... and /ws/streams/<id>/; the template tag renders cancel-url only
// for a user who may cancel the live stream, so a page shows its Stop button only
// where the element has one); drive-url; csrf-token, csrf-header, csrf-cookie (the
// drive and cancel POSTs send the token of the cookie named csrf-cookie, else
// csrf-token, in the header csrf-header, by default X-CSRFToken; an element with
// neither attribute sends the csrftoken cookie); markdown (render as Markdown, safely,
// as it streams).
// Properties: text (the whole body, every part's text included), parts (see assemble()
// in client.js), status, error; cancel(). Events (bubbling): "stream-text" on each
// piece, "stream-status" on each status ({status, error} in detail), "stream-end" once.

import {
  StreamError, TERMINAL, assemble, codePoints, follow, partKey, readBody, streamUrls,
} from "./client.js";

const WITH_TEXT = new Set(["text", "reasoning", "tool-call"]);

// No style attribute (a Content-Security-Policy without 'unsafe-inline' refuses them):
// the layout is stream-text.css's, by class. The template tag links it; an element a
// page made itself links it here, once, from beside this module.
const STYLESHEET = new URL("./stream-text.css", import.meta.url).href;

function linkStylesheet() {
  for (const link of document.querySelectorAll('link[rel="stylesheet"]')) {
    if (link.href === STYLESHEET) return;
  }
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = STYLESHEET;
  document.head.append(link);
}

function element(tag, className, text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.textContent = text;
  return node;
}

// A tool's result as the page shows it: a string as it is, anything else as JSON (as
// the template tag shows it).
function resultText(result) {
  return typeof result === "string" ? result : JSON.stringify(result, null, 2);
}

// The body text a server-rendered element shows as parts: each span of the map taken,
// in order, from the text its part shows (the element the server rendered for part
// number `data-part`).
function renderedText(body, map) {
  const shown = new Map();
  for (const node of body.querySelectorAll(":scope > [data-part]")) {
    const holder = node.matches(".stream-text-part")
      ? node : node.querySelector(".stream-reasoning-text, .stream-tool-arguments");
    shown.set(Number(node.dataset.part), { chars: [...(holder?.textContent ?? "")], used: 0 });
  }
  const numbers = new Map(); // part key → the part's number, in the order parts start
  let text = "";
  map.forEach((entry, index) => {
    const key = partKey(map, index);
    if (!numbers.has(key)) numbers.set(key, numbers.size);
    if (!WITH_TEXT.has(entry.type)) return;
    const part = shown.get(numbers.get(key));
    if (!part) return;
    const end = index + 1 < map.length ? part.used + map[index + 1].at - entry.at : Infinity;
    text += part.chars.slice(part.used, end).join("");
    part.used = Math.min(end, part.chars.length);
  });
  return text;
}

function cookie(name) {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const match = document.cookie.match(new RegExp(`(?:^|;\\s*)${escaped}=([^;]+)`));
  return match ? decodeURIComponent(match[1]) : "";
}

export class StreamTextElement extends HTMLElement {
  #controller = null;
  #text = "";
  #map = [];
  #parts = [];
  #status = null;
  #error = null;
  #body = null;
  #statusLine = null;
  #markdownModule = null;
  #markdown = null;
  #frame = 0;
  #endSent = false;
  #piece = null; // the piece onText got, for onParts to show
  // How the body shows the text: "plain" (one text), "parts" (a block a part, in
  // #views), or null until first shown (a server-rendered part's block is made again
  // then, the same; a plain text is kept).
  #layout = null;
  #fresh = false; // show the text again from scratch (a failed drive's was replaced)
  #views = [];

  get text() { return this.#text; }
  get parts() { return this.#parts; }
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

  // The CSRF token of the drive and cancel POSTs, in the header the project reads.
  #headers() {
    const token = this.getAttribute("csrf-token");
    // The cookie first where the page names one: it is current even after a login in
    // another tab rotated the token the page was rendered with. Django's default cookie
    // only for an element given no token at all.
    const name = this.getAttribute("csrf-cookie") ?? (token === null ? "csrftoken" : null);
    const header = this.getAttribute("csrf-header") || "X-CSRFToken";
    return { [header]: (name && cookie(name)) || token || "" };
  }

  async connectedCallback() {
    linkStylesheet();
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
    if (this.#markdownModule === null && this.hasAttribute("markdown")) {
      const module = await import("./markdown.js");
      if (signal.aborted) return; // removed (or moved) meanwhile: that run is the one
      this.#markdownModule ??= module;
    }
    let offset;
    if (this.#status === null) {
      // The first run: what the server rendered.
      this.#map = JSON.parse(this.getAttribute("part-map") || "[]");
      this.#text = this.#map.length
        ? renderedText(this.#body, this.#map) : this.#body.textContent;
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
    this.#parts = assemble(this.#text, this.#map);
    this.#show();
    this.#showStatus();
    if (TERMINAL.has(this.#status)) return this.#ended();
    const driveUrl = this.#status === "pending" ? this.getAttribute("drive-url") : null;
    const result = await follow({
      streamId: this.streamId,
      driveUrl,
      text: this.#text,
      parts: true,
      partMap: this.#map,
      urls: this.#urls(),
      headers: this.#headers(),
      signal,
      onText: (text, piece) => {
        // Usually the piece extends what is shown; after a failed drive the stored
        // text replaces it. onParts follows at once, and shows it.
        const extended = text.length === this.#text.length + piece.length;
        this.#text = text;
        this.#piece = { shown: extended ? piece : null, piece };
      },
      onParts: (parts, map) => {
        this.#parts = parts;
        this.#map = map;
        const change = this.#piece;
        this.#piece = null;
        if (change && change.shown === null) this.#fresh = true;
        this.#show(change ? change.shown : null);
        if (change) {
          this.dispatchEvent(new CustomEvent("stream-text", {
            bubbles: true, detail: { piece: change.piece },
          }));
        }
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
      bubbles: true,
      detail: { status: this.#status, error: this.#error, text: this.#text, parts: this.#parts },
    }));
  }

  #show(piece = null) {
    const layout = this.#map.length ? "parts" : "plain";
    if (layout !== this.#layout || this.#fresh) {
      this.#layOut(layout);
      piece = null;
    }
    if (layout === "parts") {
      this.#showParts();
      return;
    }
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
    this.#paintSoon();
  }

  // Show the text as one ("plain") or a block a part ("parts"), from scratch (the
  // server's plain text is kept until a first frame renders its Markdown).
  #layOut(layout) {
    const before = this.#layout;
    this.#layout = layout;
    this.#fresh = false;
    this.#views = [];
    if (layout === "parts") {
      this.#markdown = null;
      this.#body.textContent = "";
      this.#body.classList.add("stream-text-parts");
      return;
    }
    if (before === "parts") {
      this.#body.textContent = "";
      this.#body.classList.remove("stream-text-parts", "stream-text-markdown");
    }
    if (this.#markdownModule) this.#markdown ??= new this.#markdownModule.MarkdownView(this.#body);
  }

  // Markdown is rendered at most once a frame, however fast pieces arrive.
  #paintSoon() {
    if (this.#frame) return;
    this.#frame = requestAnimationFrame(() => {
      this.#frame = 0;
      if (this.#layout === "plain") {
        this.#body.classList.add("stream-text-markdown");
        if (!this.#body.querySelector(":scope > .markdown-block")) this.#body.textContent = "";
        this.#markdown.render(this.#text);
        return;
      }
      for (const view of this.#views) {
        if (!view?.stale) continue;
        view.stale = false;
        if (!view.painted) {
          // Its text was shown plain until now.
          view.painted = true;
          view.text.textContent = "";
          view.text.classList.add("stream-text-markdown");
        }
        view.markdown.render(view.shown);
      }
    });
  }

  #showParts() {
    this.#parts.forEach((part, number) => {
      this.#views[number] ??= this.#newView(part, number);
      this.#update(this.#views[number], part);
    });
  }

  // The blocks of one part, as the template renders them.
  #newView(part, number) {
    const view = { type: part.type, shown: "" };
    if (part.type === "reasoning") {
      view.node = element("details", "stream-reasoning");
      view.text = element("div", "stream-reasoning-text");
      view.node.append(element("summary", "", "Reasoning"), view.text);
    } else if (part.type === "tool-call") {
      view.node = element("details", "stream-tool-call");
      view.name = element("code", "stream-tool-name");
      const summary = element("summary", "", "Tool ");
      summary.append(view.name);
      view.text = element("div", "stream-tool-arguments");
      view.node.append(summary, element("div", "stream-tool-label", "Arguments"), view.text);
    } else if (part.type === "text") {
      view.node = view.text = element("div", "stream-text-part");
      if (this.#markdownModule) view.markdown = new this.#markdownModule.MarkdownView(view.text);
    } else {
      return view; // the finish: nothing to show
    }
    view.node.dataset.part = number;
    this.#body.append(view.node);
    return view;
  }

  #update(view, part) {
    if (view.type === "tool-call") {
      if (view.name.textContent !== part.name) view.name.textContent = part.name;
      if ("result" in part && !view.result) {
        view.result = element("div", "stream-tool-result", resultText(part.result));
        view.node.append(element("div", "stream-tool-label", "Result"), view.result);
      }
    }
    const text = view.type === "tool-call" ? part.arguments : part.text;
    if (text === undefined || text === view.shown) return;
    if (view.markdown) {
      view.shown = text;
      view.stale = true;
      // Plain until the frame that renders it (as the server rendered it): no blank frame.
      if (!view.painted) view.text.textContent = text;
      this.#paintSoon();
      return;
    }
    // A part's text grows at its end: append what is new, not the whole text again.
    const node = view.text.firstChild;
    if (node && node === view.text.lastChild && node.nodeType === Node.TEXT_NODE
        && text.startsWith(view.shown)) {
      node.appendData(text.slice(view.shown.length));
    } else {
      view.text.textContent = text;
    }
    view.shown = text;
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
