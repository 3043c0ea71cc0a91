// A negentropy peer built from nostr-tools' nip77, for relaypool's interop
// tests. It speaks JSON lines on stdin/stdout:
//   first line:  {"role": "initiator"|"responder", "records": [[ts, idHex], ...], "frameSizeLimit": n}
//   initiator:   answers {"msg": hex} (its first message), then each
//                {"msg": hex} with {"msg": hex|null, "have": [...], "need": [...]}
//   responder:   answers {"ready": true}, then each {"msg": hex} with {"msg": hex}
// Errors are answered {"error": "..."}. NOSTR_TOOLS_DIR names the folder
// holding node_modules/nostr-tools.
//
// nostr-tools' Negentropy.reconcile is an initiator: it never answers an id
// list with its own. The responder here is therefore assembled from
// nostr-tools' parts (its storage, fingerprints, bound codec and range
// splitting) with the responder's id-list answer of NIP-77's appendix.
import { createInterface } from 'node:readline'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const dir = process.env.NOSTR_TOOLS_DIR
const module = join(dir, 'node_modules', 'nostr-tools', 'lib', 'esm', 'nip77.js')
const { Negentropy, NegentropyStorageVector } = await import(pathToFileURL(module).href)

const MODE_SKIP = 0
const MODE_FINGERPRINT = 1
const MODE_ID_LIST = 2
const INFINITY = Number.MAX_VALUE

const toHex = (bytes) => Buffer.from(bytes).toString('hex')
const fromHex = (hex) => new Uint8Array(Buffer.from(hex, 'hex'))

function varint(n) {
  const digits = [n % 128]
  n = Math.floor(n / 128)
  while (n > 0) {
    digits.unshift((n % 128) | 128)
    n = Math.floor(n / 128)
  }
  return Uint8Array.from(digits)
}

class Reader {
  constructor(bytes) {
    this.bytes = bytes
    this.offset = 0
  }
  get length() {
    return this.bytes.length - this.offset
  }
  shiftN(n) {
    if (n > this.length) throw Error('message ends in the middle of a range')
    const chunk = this.bytes.subarray(this.offset, this.offset + n)
    this.offset += n
    return chunk
  }
  shift() {
    return this.shiftN(1)[0]
  }
}

function readVarint(reader) {
  let value = 0
  for (;;) {
    const digit = reader.shift()
    value = value * 128 + (digit & 127)
    if ((digit & 128) === 0) return value
  }
}

function respond(negentropy, message) {
  const storage = negentropy.storage
  const query = new Reader(fromHex(message))
  negentropy.lastTimestampIn = negentropy.lastTimestampOut = 0
  const output = [Uint8Array.of(0x61)]
  let outputLength = 1
  const add = (chunk) => {
    output.push(chunk)
    outputLength += chunk.length
  }
  const version = query.shift()
  if (version !== 0x61) return '61'
  // decodeBound reads with shift/shiftN, like nostr-tools' own buffer.
  let previousBound = negentropy._bound(0)
  let previousIndex = 0
  let skip = false
  while (query.length !== 0) {
    const parts = []
    const flushSkip = () => {
      if (skip) {
        skip = false
        parts.push(negentropy.encodeBound(previousBound).unwrap(), varint(MODE_SKIP))
      }
    }
    const bound = negentropy.decodeBound(query)
    const mode = readVarint(query)
    const lower = previousIndex
    let upper = storage.findLowerBound(previousIndex, storage.size(), bound)
    if (mode === MODE_SKIP) {
      skip = true
    } else if (mode === MODE_FINGERPRINT) {
      const theirs = toHex(query.shiftN(16))
      if (theirs !== toHex(storage.fingerprint(lower, upper))) {
        flushSkip()
        const chunk = new WrappedBuffer()
        negentropy.splitRange(lower, upper, bound, chunk)
        parts.push(chunk.unwrap())
      } else {
        skip = true
      }
    } else if (mode === MODE_ID_LIST) {
      const count = readVarint(query)
      for (let i = 0; i < count; i++) query.shiftN(32)
      flushSkip()
      let endBound = bound
      const ids = []
      storage.iterate(lower, upper, (item, index) => {
        if (negentropy.exceededFrameSizeLimit(outputLength + 32 * ids.length)) {
          endBound = item
          upper = index
          return false
        }
        ids.push(item.id)
        return true
      })
      for (const part of parts.splice(0)) add(part)
      add(negentropy.encodeBound(endBound).unwrap())
      add(varint(MODE_ID_LIST))
      add(varint(ids.length))
      for (const id of ids) add(id)
    } else {
      throw Error('unexpected mode ' + mode)
    }
    const partsLength = parts.reduce((sum, part) => sum + part.length, 0)
    if (negentropy.exceededFrameSizeLimit(outputLength + partsLength)) {
      add(negentropy.encodeBound(negentropy._bound(INFINITY)).unwrap())
      add(varint(MODE_FINGERPRINT))
      add(storage.fingerprint(upper, storage.size()))
      break
    }
    for (const part of parts) add(part)
    previousIndex = upper
    previousBound = bound
  }
  return toHex(Buffer.concat(output))
}

const say = (object) => process.stdout.write(JSON.stringify(object) + '\n')
let negentropy = null
let role = null
let WrappedBuffer = null

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
for await (const line of lines) {
  try {
    const request = JSON.parse(line)
    if (negentropy === null) {
      const storage = new NegentropyStorageVector()
      for (const [timestamp, id] of request.records) storage.insert(timestamp, id)
      storage.seal()
      negentropy = request.frameSizeLimit
        ? new Negentropy(storage, request.frameSizeLimit)
        : new Negentropy(storage)
      WrappedBuffer = negentropy.encodeBound(negentropy._bound(0)).constructor
      role = request.role
      if (role === 'initiator') say({ msg: negentropy.initiate() })
      else say({ ready: true })
    } else if (role === 'initiator') {
      const have = []
      const need = []
      const next = negentropy.reconcile(request.msg, (id) => have.push(id), (id) => need.push(id))
      say({ msg: next, have, need })
    } else {
      say({ msg: respond(negentropy, request.msg) })
    }
  } catch (error) {
    say({ error: String(error && error.message ? error.message : error) })
  }
}
