// nostr-tools' NegentropySync as a NIP-77 client against a relay, for
// relaypool's interop tests:
//   node --experimental-websocket negentropy_client.mjs URL RECORDS_FILE FILTER_JSON
// RECORDS_FILE holds [[created_at, idHex], ...], the client's own records.
// Prints one line: {"have": [...], "need": [...], "closed": reason|null}.
// NOSTR_TOOLS_DIR names the folder holding node_modules/nostr-tools.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const lib = join(process.env.NOSTR_TOOLS_DIR, 'node_modules', 'nostr-tools', 'lib', 'esm')
const load = (name) => import(pathToFileURL(join(lib, name)).href)
const { Relay, useWebSocketImplementation } = await load('relay.js')
const { NegentropyStorageVector, NegentropySync } = await load('nip77.js')

const [url, recordsFile, filterJSON] = process.argv.slice(2)
useWebSocketImplementation(WebSocket)
const storage = new NegentropyStorageVector()
for (const [timestamp, id] of JSON.parse(readFileSync(recordsFile, 'utf8'))) storage.insert(timestamp, id)
storage.seal()

const relay = await Relay.connect(url)
const have = []
const need = []
const closed = await new Promise((resolve) => {
  const sync = new NegentropySync(relay, storage, JSON.parse(filterJSON), {
    onhave: (id) => have.push(id),
    onneed: (id) => need.push(id),
    onclose: (reason) => resolve(reason ?? null),
  })
  sync.start()
})
process.stdout.write(JSON.stringify({ have, need, closed }) + '\n')
relay.close()
process.exit(0)
