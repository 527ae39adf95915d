// Types for react.js (streaming_app's React hook).
import type { Ended, Mount, Part, Status, StreamUrls } from "./client.js";

export interface UseStreamOptions {
  /** The view that drives (generates) the stream. */
  driveUrl?: string | null;
  /** This browser started the stream: drive it through driveUrl while it is pending. */
  drive?: boolean;
  /** Follow the stream's parts too (reasoning, tool calls, text): see `parts`. */
  parts?: boolean;
  /** Sent with the drive and cancel POSTs (a CSRF token, say). */
  headers?: HeadersInit;
  urls?: Mount & Partial<StreamUrls>;
}

export interface UseStreamResult {
  /** The text so far, from code point 0 (every part's text, for a stream with parts). */
  text: string;
  /** With `parts: true`, the parts of the text so far (see assemble() in client.js);
   * else empty. */
  parts: Part[];
  /** null until the first status arrives. */
  status: Status | null;
  error: string | null;
  cancel(): Promise<{ id: string; status: Status; error: string | null; length: number }>;
}

export function useStream(streamId: string | null | undefined, options?: UseStreamOptions): UseStreamResult;
export type { Ended };
