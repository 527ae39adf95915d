// Types for client.js (streaming_app's browser client).

export type Status = "pending" | "streaming" | "done" | "error" | "cancelled" | "timeout";

/** A refusal: an HTTP status (400, 403, 404, 429, 503...) or a websocket close code
 * (4400, 4403, 4404). */
export class StreamError extends Error {
  constructor(status: number, message: string);
  status: number;
}

export const TERMINAL: ReadonlySet<Status>;

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

export interface StreamBody {
  id: string;
  status: Status;
  text: string;
  offset: number;
  length: number;
  error: string | null;
}

export type OnText = (text: string, piece: string) => void;
export type OnStatus = (status: Status, error: string | null) => void;

export interface Ended {
  text: string;
  status: Status | null;
  error: string | null;
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
  },
): { done: Promise<Ended>; close(): void };

export interface FollowOptions {
  streamId: string;
  /** The view that drives the stream: drive it from this browser if it is pending. */
  driveUrl?: string | null;
  /** What the page shows already: the committed text from code point 0. */
  text?: string;
  headers?: HeadersInit;
  body?: BodyInit;
  signal?: AbortSignal;
  onText?: OnText;
  onStatus?: OnStatus;
  /** Prefixes (`api`, `ws`) or whole URLs (`body`, `events`, `cancel`, `socket`). */
  urls?: Mount & Partial<StreamUrls>;
  retries?: number;
}

/** Drive or watch one stream to its end; resolves with its text and final status. */
export function follow(options: FollowOptions): Promise<Ended>;

export function cancel(
  url: string,
  options?: { headers?: HeadersInit },
): Promise<{ id: string; status: Status; error: string | null; length: number }>;
