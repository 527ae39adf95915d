// node produce.mjs <url> <piece>...: create a text/plain stream and write the pieces
// with the official client's IdempotentProducer, one batch each, then close it.
import { DurableStream, IdempotentProducer } from "@durable-streams/client"

const [url, ...pieces] = process.argv.slice(2)
const handle = await DurableStream.create({ url, contentType: "text/plain", warnOnHttp: false })
let failure = null
const producer = new IdempotentProducer(handle, "test-producer", {
  onError: (error) => {
    failure = error
  },
})
for (const piece of pieces) {
  producer.append(piece)
  await producer.flush() // one batch (one append) per piece
  await new Promise((resolve) => setTimeout(resolve, 20))
}
await producer.close()
if (failure) throw failure
console.log(JSON.stringify({ written: pieces.length }))
