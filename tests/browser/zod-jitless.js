// The AI SDK checks chunks with zod, which tries whether it may compile code (new
// Function) as the SDK defines its schemas: under a Content-Security-Policy without
// 'unsafe-eval' the try is refused and reported as a violation (zod then does without).
// jitless: no try. Imported before the SDK, so that this runs first.
import { config } from "zod/v4/core";

config({ jitless: true });
