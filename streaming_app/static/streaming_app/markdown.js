// Markdown as it streams, safely: an ES module, no build step.
//
// The text is parsed by marked (vendor/marked.esm.js) into top-level blocks; a block
// already shown is left alone while its source is unchanged, so that only the block
// being written (usually the last) is rendered again as text arrives: an unfinished
// code fence shows as a code block that grows, and nothing above it flickers.
//
// No HTML from the model ever runs: HTML it writes is shown as text, images become
// links (an image would be fetched the moment it is shown: a way to leak the page's
// data to any address the model was talked into writing), and what marked produces
// goes through DOMPurify (vendor/purify.es.js), which drops scripts, event handler
// attributes and javascript: links.

import { Marked } from "./vendor/marked.esm.js";
import createDOMPurify from "./vendor/purify.es.js";

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const marked = new Marked({
  gfm: true,
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    // marked passes some text through unescaped (after inline HTML it calls it
    // "escaped"): never for a model's text.
    text(token) {
      if (!token.tokens) token.escaped = false;
      return false;
    },
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
  },
});

const purify = createDOMPurify(window);
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") node.setAttribute("rel", "noopener noreferrer nofollow");
});
const SANITIZE = {
  FORBID_TAGS: ["img", "picture", "source", "video", "audio", "iframe", "object", "embed",
    "form", "input", "button", "textarea", "select", "style", "svg", "math"],
  FORBID_ATTR: ["style", "srcset", "id", "name"],
};

// HTML for some Markdown, sanitized.
export function renderMarkdown(text) {
  return purify.sanitize(marked.parse(text), SANITIZE);
}

// Renders a growing text as Markdown into `element`, block by block.
export class MarkdownView {
  constructor(element) {
    this.element = element;
    this.blocks = [];
  }

  render(text) {
    const tokens = marked.lexer(text);
    // Reference links resolve against definitions anywhere in the text: when those
    // change, every block is rendered again.
    const links = JSON.stringify(tokens.links);
    let same = 0;
    if (links === this.links) {
      while (same < this.blocks.length && same < tokens.length
             && this.blocks[same].raw === tokens[same].raw) same++;
    }
    this.links = links;
    for (const block of this.blocks.splice(same)) block.node.remove();
    for (const token of tokens.slice(same)) {
      const node = document.createElement("div");
      node.className = "markdown-block";
      node.style.display = "contents";
      const html = marked.parser(Object.assign([token], { links: tokens.links }));
      node.innerHTML = purify.sanitize(html, SANITIZE);
      this.element.append(node);
      this.blocks.push({ raw: token.raw, node });
    }
  }

  clear() {
    for (const block of this.blocks.splice(0)) block.node.remove();
  }
}
