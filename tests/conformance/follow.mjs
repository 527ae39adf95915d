// node follow.mjs <url> <offset> <long-poll|sse>: read a stream with the official
// TypeScript client, live, until it closes; print {text, offset, closed} as JSON.
import { stream } from "@durable-streams/client"

const [url, offset, live] = process.argv.slice(2)
const response = await stream({ url, offset, live, warnOnHttp: false })
const reader = response.textStream().getReader()
let text = ""
for (;;) {
  const { value, done } = await reader.read()
  if (done) break
  text += value
}
console.log(JSON.stringify({ text, offset: response.offset, closed: response.streamClosed }))
