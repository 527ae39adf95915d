// The parts model of streaming_app's browser client (client.js exports it): a body's
// text and its part map, as the parts they make.
//
// Parts (docs/protocol.md, streaming_app/parts.py): a stream's body is one text; a
// stream with parts also has a part map, entries {at, type, ...} that only ever grow,
// each saying that from body offset `at` on the text belongs to a new span of a part.

const WITH_TEXT = new Set(["text", "reasoning", "tool-call"]);

// The part entry `index` of `map` belongs to: a tool call's id, else the entry itself.
export function partKey(map, index) {
  const entry = map[index];
  return entry.type === "tool-call" || entry.type === "tool-result"
    ? `call:${entry.id}`
    : `${entry.type}:${index}`;
}

function lastAtOrBefore(map, offset) {
  let lo = 0;
  let hi = map.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (map[mid].at <= offset) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

// A body's parts as its part map and its text arrive: merge() entries (by their number
// in the map), then append() the text they describe; `parts` is then what assemble()
// gives for the text appended, from body offset `offset` on. Each piece costs its own
// length, not the whole text's.
export class PartsBuilder {
  #byKey = new Map();
  #text = [];

  constructor(offset = 0) {
    this.offset = offset;
    this.length = offset; // the body offset the text appended reaches
    this.map = [];
    this.parts = [];
  }

  // Put `entries` (the first being entry number `first`) into the map; false if
  // entries before `first` are missing (a gap: nothing is merged).
  merge(first, entries) {
    if (first > this.map.length) return false;
    let redo = false;
    for (let index = first; index < first + entries.length; index++) {
      if (index < this.map.length) continue; // known: map entries never change
      const entry = entries[index - first];
      // Text already appended past an entry's start went to the span before it. Only
      // the first entry of a stream that began as plain text may (its text is the
      // plain text so far); anything else means the text came before its map.
      if (this.#text.length && entry.at < this.length
          && !(index === 0 && entry.type === "text" && entry.at === 0)) redo = true;
      this.map.push(entry);
      this.#open(index);
    }
    if (redo) this.#rebuild();
    return true;
  }

  append(text) {
    if (!text) return;
    this.#text.push(text);
    this.#distribute(text);
  }

  // The parts, copied (a caller may keep them: later pieces do not change them).
  snapshot() {
    return this.parts.map((part) => ({ ...part }));
  }

  #part(key, make) {
    let part = this.#byKey.get(key);
    if (!part) {
      part = make();
      this.#byKey.set(key, part);
      this.parts.push(part);
    }
    return part;
  }

  #open(index) {
    const entry = this.map[index];
    const key = partKey(this.map, index);
    if (entry.type === "tool-result") {
      const call = this.#part(key, () => ({ type: "tool-call", id: entry.id, name: "", arguments: "" }));
      call.result = entry.result ?? null;
    } else if (entry.type === "finish") {
      this.#part(`finish:${index}`, () => ({
        type: "finish", reason: entry.reason ?? null, usage: entry.usage || {},
      }));
    } else if (entry.type === "tool-call") {
      const call = this.#part(key, () => ({ type: "tool-call", id: entry.id, name: "", arguments: "" }));
      call.name = call.name || entry.name || ""; // named by the first entry that names it
    } else {
      this.#part(key, () => ({ type: entry.type, text: "" }));
    }
  }

  #distribute(text) {
    const chars = [...text];
    if (!this.map.length) {
      // A plain stream (so far): one text part, which a first entry
      // {"at": 0, "type": "text"} ("text:0") would go on with.
      this.#part("text:0", () => ({ type: "text", text: "" })).text += text;
      this.length += chars.length;
      return;
    }
    for (let i = 0; i < chars.length;) {
      const index = lastAtOrBefore(this.map, this.length);
      const next = index + 1 < this.map.length ? this.map[index + 1].at : Infinity;
      const taken = Math.min(chars.length - i, next - this.length);
      const entry = this.map[index];
      if (entry && WITH_TEXT.has(entry.type)) {
        const part = this.#byKey.get(partKey(this.map, index));
        const piece = chars.slice(i, i + taken).join("");
        if (entry.type === "tool-call") part.arguments += piece;
        else part.text += piece;
      }
      i += taken;
      this.length += taken;
    }
  }

  #rebuild() {
    this.#byKey.clear();
    this.parts = [];
    this.length = this.offset;
    for (let index = 0; index < this.map.length; index++) this.#open(index);
    for (const text of this.#text) this.#distribute(text);
  }
}

// The parts of a body (`text` from body offset `offset`) and its part map, as
// streaming_app.parts.assemble gives them, in the order they started:
// {type: "reasoning"|"text", text}, {type: "tool-call", id, name, arguments, result?},
// {type: "finish", reason, usage}. A plain stream (no map) is one text part.
export function assemble(text, map, offset = 0) {
  const builder = new PartsBuilder(offset);
  builder.merge(0, map || []);
  builder.append(text);
  return builder.parts;
}
