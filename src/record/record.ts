// A captured write: the unit that travels agent → local gateway → remote sites and
// is stored in the journal. A fixed 72-byte header followed by the payload (for
// WRITE only). The header carries its own checksum and the payload's XXH3-128, so
// a flipped bit anywhere is detected before a record is applied.
import { type BatchOp, xxh3 } from "../native/mod.ts";

export const RECORD_MAGIC = 0x434e5231; // "CNR1"
export const HEADER_SIZE = 72;
/** The largest write payload: an NBD request's (advertised as the maximum block size), a record's. */
export const MAX_PAYLOAD = 32 * 1024 * 1024;

export const enum Kind {
  Write = 1,
  Trim = 2,
  Zero = 3,
  /** A FLUSH barrier: replay is crash-consistent at every barrier. */
  Flush = 4,
  /** Fills the rest of the journal ring before it wraps (journal only). */
  Wrap = 5,
  /** A replica starts a differential synchronisation: inconsistent until SyncEnd. */
  SyncBegin = 6,
  /** The synchronisation that began is complete: the replica is consistent from here. */
  SyncEnd = 7,
}

export const FLAG_FUA = 1;
/** WRITE_ZEROES without NBD_CMD_FLAG_NO_HOLE: the range may be deallocated. */
export const FLAG_MAY_TRIM = 2;
/**
 * A chunk copied by a synchronisation, not a captured write. It carries the
 * sequence number of the last record before it in the stream (it adds no new one).
 */
export const FLAG_SYNC = 4;

/** True for records that sit between sequence numbers (sync chunks and markers). */
export function betweenSeqs(h: { kind: Kind; flags: number }): boolean {
  return (h.flags & FLAG_SYNC) !== 0 || h.kind === Kind.SyncBegin || h.kind === Kind.SyncEnd;
}

export interface RecordHeader {
  kind: Kind;
  flags: number;
  volume: number;
  length: number;
  seq: number;
  offset: number;
  time: number;
  /** Position in the journal; 0 outside the journal. */
  pos: number;
}

// field offsets
const O_MAGIC = 0, O_KIND = 4, O_FLAGS = 5, O_VOLUME = 8, O_LENGTH = 12, O_SEQ = 16, O_OFFSET = 24;
const O_TIME = 32, O_POS = 40, O_SUM = 48, O_HSUM = 64;

export function payloadLength(h: { kind: Kind; length: number }): number {
  return h.kind === Kind.Write ? h.length : 0;
}

const hsumScratch = new Uint8Array(16);

function headerSum(b: Uint8Array): bigint {
  xxh3(b.subarray(0, O_HSUM), hsumScratch);
  return new DataView(hsumScratch.buffer).getBigUint64(0);
}

/**
 * Encodes a record into one buffer (header + payload). For writes pass the
 * payload; its checksum is computed here.
 */
export function encodeRecord(h: RecordHeader, payload?: Uint8Array): Uint8Array {
  const plen = payloadLength(h);
  if ((payload?.length ?? 0) !== plen) {
    throw new Error(`record payload is ${payload?.length ?? 0} bytes, expected ${plen}`);
  }
  const b = new Uint8Array(HEADER_SIZE + plen);
  if (payload) b.set(payload, HEADER_SIZE);
  writeHeader(b, h);
  return b;
}

/** Writes the header into b[0..72) for the payload already at b[72..). */
export function writeHeader(b: Uint8Array, h: RecordHeader): void {
  const v = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  v.setUint32(O_MAGIC, RECORD_MAGIC);
  v.setUint8(O_KIND, h.kind);
  v.setUint8(O_FLAGS, h.flags);
  v.setUint16(6, 0);
  v.setUint32(O_VOLUME, h.volume);
  v.setUint32(O_LENGTH, h.length);
  v.setBigUint64(O_SEQ, BigInt(h.seq));
  v.setBigUint64(O_OFFSET, BigInt(h.offset));
  v.setBigUint64(O_TIME, BigInt(h.time));
  v.setBigUint64(O_POS, BigInt(h.pos));
  xxh3(b.subarray(HEADER_SIZE, HEADER_SIZE + payloadLength(h)), b.subarray(O_SUM, O_SUM + 16));
  v.setBigUint64(O_HSUM, headerSum(b));
}

/** Rewrites volume id and journal position (gateway side) and reseals the header; the payload sum stays. */
export function restamp(b: Uint8Array, volume: number, pos: number): void {
  const v = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  v.setUint32(O_VOLUME, volume);
  v.setBigUint64(O_POS, BigInt(pos));
  v.setBigUint64(O_HSUM, headerSum(b));
}

export class RecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RecordError";
  }
}

/**
 * Decodes and verifies a header (magic, header checksum, sane fields). Throws
 * RecordError when anything is wrong: the caller treats the stream as corrupt.
 */
export function decodeHeader(b: Uint8Array, maxLength: number): RecordHeader {
  if (b.length < HEADER_SIZE) throw new RecordError("record header truncated");
  const v = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  if (v.getUint32(O_MAGIC) !== RECORD_MAGIC) throw new RecordError("bad record magic");
  if (v.getBigUint64(O_HSUM) !== headerSum(b)) throw new RecordError("record header checksum mismatch");
  const kind = v.getUint8(O_KIND) as Kind;
  if (kind < Kind.Write || kind > Kind.SyncEnd) throw new RecordError(`unknown record kind ${kind}`);
  const h: RecordHeader = {
    kind,
    flags: v.getUint8(O_FLAGS),
    volume: v.getUint32(O_VOLUME),
    length: v.getUint32(O_LENGTH),
    seq: Number(v.getBigUint64(O_SEQ)),
    offset: Number(v.getBigUint64(O_OFFSET)),
    time: Number(v.getBigUint64(O_TIME)),
    pos: Number(v.getBigUint64(O_POS)),
  };
  if (kind === Kind.Write && h.length > maxLength) {
    throw new RecordError(`record length ${h.length} too large`);
  }
  return h;
}

const sumScratch = new Uint8Array(16);

/**
 * True when b is exactly one record: the header and a payload of the header's length
 * whose checksum matches. Trailing bytes make it false: the journal stores all the
 * bytes it is given but walks the ring by the header's length, so a record with junk
 * after it (e.g. a TRIM frame carrying a body) left bytes that a ring walk (recovery
 * after a restart, a cursor reading behind its cache) lands in and stops at (found by
 * tests/fuzz-replication.test.ts, "regression: a record with bytes after it").
 */
export function payloadIntact(b: Uint8Array, h: RecordHeader): boolean {
  const plen = payloadLength(h);
  if (b.length !== HEADER_SIZE + plen) return false;
  xxh3(b.subarray(HEADER_SIZE, HEADER_SIZE + plen), sumScratch);
  for (let i = 0; i < 16; i++) if (sumScratch[i] !== b[O_SUM + i]) return false;
  return true;
}

/** The payload's checksum as stored in the header (16 bytes, a view). */
export function payloadSum(b: Uint8Array): Uint8Array {
  return b.subarray(O_SUM, O_SUM + 16);
}

/** The operation that applies a record to an image; undefined for barriers and markers. */
export function recordOp(h: RecordHeader, bytes: Uint8Array): BatchOp | undefined {
  switch (h.kind) {
    case Kind.Write:
      return { op: "write", buf: bytes.subarray(HEADER_SIZE, HEADER_SIZE + h.length), off: h.offset };
    case Kind.Trim:
      return { op: "trim", off: h.offset, len: h.length };
    case Kind.Zero:
      return { op: h.flags & FLAG_MAY_TRIM ? "zero-may-trim" : "zero", off: h.offset, len: h.length };
    default:
      return undefined;
  }
}
