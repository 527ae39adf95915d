// Types for client.js (streaming_app's browser client).

export type Status = "pending" | "streaming" | "done" | "error" | "cancelled" | "timeout";

/** A refusal: an HTTP status (400, 403, 404, 429, 503...) or a websocket close code
 * (4400, 4403, 4404; 1011 once the server has failed past SERVER_ERROR_RETRIES). */
export class StreamError extends Error {
  constructor(status: number, message: string, streamStatus?: Status | null);
  status: number;
  /** How the stream ended, when the answer says: a drive whose run ended before its
   * first piece (502 "error", 504 "timeout", 409 "cancelled"); the message is then
   * the stream's public error. Otherwise null. */
  streamStatus: Status | null;
}

export const TERMINAL: ReadonlySet<Status>;

/** How many times watch() tries again after the server failed (close code 1011). */
export const SERVER_ERROR_RETRIES: number;
/** watch() acknowledges the text its websocket has taken (`?ack=1`) once this many
 * code points have come since the last acknowledgement... */
export const ACK_CHARS: number;
/** ...or this many milliseconds after text came. */
export const ACK_DELAY: number;

/** The length of `text` in Unicode code points, as the server counts offsets. */
export function codePoints(text: string): number;

/** Milliseconds to wait before attempt `attempt`: exponential, capped, full jitter. */
export function backoff(attempt: number, options?: { base?: number; cap?: number }): number;

export interface StreamUrls {
  body: string;
  events: string;
  cancel: string;
  socket: string;
}

/** Where the app is mounted: `api` for HTTP (default "/api/streams/"), `ws` for the
 * websocket routes (default "/ws/streams/"). */
export interface Mount {
  api?: string;
  ws?: string;
}

export function streamUrls(streamId: string, mount?: Mount & Partial<StreamUrls>): StreamUrls;

/** An entry of a stream's part map: from body offset `at` on, the text belongs to a
 * new span of a part (docs/protocol.md). Entries only ever grow, in order of `at`. */
export type PartEntry =
  | { at: number; type: "reasoning" | "text" }
  | { at: number; type: "tool-call"; id: string; name: string }
  | { at: number; type: "tool-result"; id: string; result: unknown }
  | { at: number; type: "finish"; reason: string; usage: Record<string, unknown> };

/** A part of a stream, as assemble() gives it. */
export type Part =
  | { type: "reasoning" | "text"; text: string }
  | { type: "tool-call"; id: string; name: string; arguments: string; result?: unknown }
  | { type: "finish"; reason: string; usage: Record<string, unknown> };

/** The key of the part that entry `index` of `map` belongs to ("call:<id>" for a tool
 * call or its result, else "<type>:<index>"). */
export function partKey(map: readonly PartEntry[], index: number): string;

/** The parts of a body's `text` (from body offset `offset`) and its part map, in the
 * order they started, as `streaming_app.parts.assemble` gives them. A plain stream
 * (no map) is one text part; no text and no map, none. */
export function assemble(text: string, map: readonly PartEntry[] | null | undefined, offset?: number): Part[];

/** Parts as the map and the text arrive: merge() entries, then append() their text;
 * `parts` is what assemble() gives for the text appended so far. */
export class PartsBuilder {
  constructor(offset?: number);
  readonly offset: number;
  /** The body offset the text appended reaches. */
  readonly length: number;
  readonly map: PartEntry[];
  readonly parts: Part[];
  /** Put `entries` (the first being entry number `first`) into the map; false if
   * entries before `first` are missing. */
  merge(first: number, entries: readonly PartEntry[]): boolean;
  append(text: string): void;
  /** The parts, copied. */
  snapshot(): Part[];
}

export interface StreamBody {
  id: string;
  status: Status;
  text: string;
  offset: number;
  length: number;
  error: string | null;
  /** The whole part map, for a stream that has one. */
  parts?: PartEntry[];
}

export type OnText = (text: string, piece: string) => void;
export type OnStatus = (status: Status, error: string | null) => void;
/** Entries of the part map (the first being entry number `first`), before the text
 * they came with reaches onText. */
export type OnMap = (first: number, entries: PartEntry[]) => void;
/** The parts of the whole text so far, and the part map. */
export type OnParts = (parts: Part[], map: PartEntry[]) => void;

export interface Ended {
  text: string;
  status: Status | null;
  error: string | null;
  /** With `parts: true`: the parts of the text, and the part map. */
  parts?: Part[];
  map?: PartEntry[];
}

export function drive(
  url: string,
  options?: {
    onText?: OnText;
    /** Called once the server has accepted the drive: the stream is streaming. */
    onStart?: () => void;
    headers?: HeadersInit;
    body?: BodyInit;
    signal?: AbortSignal;
    /** How many times a 429 or 503 is waited out (Retry-After) before giving up. */
    retries?: number;
    /** Ask for the part map (?parts=1, NDJSON); onText then also gets "" when a
     * message brought only entries. */
    parts?: boolean;
    onMap?: OnMap;
    /** With `parts`: the stream's final status, the body's last line. */
    onStatus?: OnStatus;
  },
): Promise<string>;

export function readBody(url: string, offset?: number): Promise<StreamBody>;

export function watch(
  url: string,
  options?: {
    offset?: number;
    onText?: OnText;
    onStatus?: OnStatus;
    signal?: AbortSignal;
    /** The stream's SSE URL: used where websockets cannot open. */
    eventsUrl?: string;
    /** The stream's body URL: tells why an SSE connection was refused. */
    bodyUrl?: string;
    /** Ask for the part map (?parts=1); onText then also gets "" when a message
     * brought only entries. */
    parts?: boolean;
    onMap?: OnMap;
  },
): { done: Promise<Ended>; close(): void };

export interface FollowOptions {
  streamId: string;
  /** The view that drives the stream: drive it from this browser if it is pending. */
  driveUrl?: string | null;
  /** What the page shows already: the committed text from code point 0. */
  text?: string;
  /** Sent with the drive, e.g. `{ "X-CSRFToken": token }` (the header your
   * `CSRF_HEADER_NAME` names): client.js reads no cookie. `<stream-text>` sends the
   * token the template tag rendered. */
  headers?: HeadersInit;
  body?: BodyInit;
  signal?: AbortSignal;
  onText?: OnText;
  onStatus?: OnStatus;
  /** Prefixes (`api`, `ws`) or whole URLs (`body`, `events`, `cancel`, `socket`). */
  urls?: Mount & Partial<StreamUrls>;
  retries?: number;
  /** Follow the part map too (reasoning, tool calls, text): onParts gets the parts. */
  parts?: boolean;
  /** The part map of `text` (the template tag renders it); read if not given. */
  partMap?: PartEntry[];
  onParts?: OnParts;
}

/** Drive or watch one stream to its end; resolves with its text and final status. */
export function follow(options: FollowOptions): Promise<Ended>;

export function cancel(
  url: string,
  options?: { headers?: HeadersInit },
): Promise<{ id: string; status: Status; error: string | null; length: number }>;
