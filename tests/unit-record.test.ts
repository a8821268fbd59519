// Unit tests of the captured-write record format (src/record/record.ts).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  betweenSeqs,
  decodeHeader,
  encodeRecord,
  FLAG_FUA,
  FLAG_MAY_TRIM,
  FLAG_SYNC,
  HEADER_SIZE,
  Kind,
  payloadIntact,
  payloadLength,
  payloadSum,
  RECORD_MAGIC,
  RecordError,
  type RecordHeader,
  restamp,
  writeHeader,
} from "../src/record/record.ts";
import { xxh3 } from "../src/native/mod.ts";

await (await import("../native/build.ts")).buildNative();

const MAX = 32 * 1024 * 1024;

function header(over: Partial<RecordHeader> = {}): RecordHeader {
  return {
    kind: Kind.Write,
    flags: 0,
    volume: 7,
    length: 0,
    seq: 42,
    offset: 1 << 20,
    time: 1_700_000_000_123,
    pos: 0,
    ...over,
  };
}

function payload(n: number, seed = 1): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

function writeRecord(
  n: number,
  over: Partial<RecordHeader> = {},
): { h: RecordHeader; b: Uint8Array; p: Uint8Array } {
  const p = payload(n, n + 3);
  const h = header({ length: n, ...over });
  return { h, b: encodeRecord(h, p), p };
}

function throwsRecordError(fn: () => unknown, pattern?: RegExp): void {
  try {
    fn();
  } catch (e) {
    assert.instance(e, RecordError, String(e));
    if (pattern) assert.match((e as Error).message, pattern);
    return;
  }
  assert.unreachable("expected a RecordError");
}

// ---------------------------------------------------------------------------
const codec = suite("record codec");

codec("a write round-trips: header fields, payload bytes, layout", () => {
  const { h, b, p } = writeRecord(4096, { flags: FLAG_FUA, pos: 123456 });
  assert.is(b.length, HEADER_SIZE + 4096);
  assert.is(HEADER_SIZE, 72);
  assert.is(new DataView(b.buffer).getUint32(0), RECORD_MAGIC);
  assert.equal(b.subarray(HEADER_SIZE), p);
  const d = decodeHeader(b, MAX);
  assert.equal(d, h);
  assert.ok(payloadIntact(b, d));
  assert.equal(payloadSum(b), xxh3(p));
});

codec("non-write kinds carry no payload but keep their length", () => {
  for (const kind of [Kind.Trim, Kind.Zero, Kind.Flush, Kind.Wrap, Kind.SyncBegin, Kind.SyncEnd]) {
    const h = header({ kind, length: 1 << 30, flags: kind === Kind.Zero ? FLAG_MAY_TRIM : 0 });
    assert.is(payloadLength(h), 0);
    const b = encodeRecord(h);
    assert.is(b.length, HEADER_SIZE);
    const d = decodeHeader(b, MAX);
    assert.equal(d, h);
    assert.ok(payloadIntact(b, d));
    // the payload checksum of a record without payload is the hash of nothing
    assert.equal(payloadSum(b), xxh3(new Uint8Array(0)));
  }
});

codec("large field values survive (offsets and positions past 2^32, seq up to 2^53-1)", () => {
  const h = header({
    volume: 0xffffffff,
    length: 512,
    seq: Number.MAX_SAFE_INTEGER,
    offset: 5 * 1024 ** 4,
    time: 2 ** 50 + 3,
    pos: 2 ** 45 + 17,
    flags: 0xff,
  });
  const b = encodeRecord(h, payload(512));
  assert.equal(decodeHeader(b, MAX), h);
});

codec("a zero-length write and an empty payload", () => {
  const h = header({ length: 0 });
  const b = encodeRecord(h, new Uint8Array(0));
  assert.is(b.length, HEADER_SIZE);
  assert.equal(decodeHeader(b, MAX), h);
  assert.ok(payloadIntact(b, h));
});

codec("sync chunks and markers sit between sequence numbers; captured records do not", () => {
  assert.ok(betweenSeqs({ kind: Kind.Write, flags: FLAG_SYNC }));
  assert.ok(betweenSeqs({ kind: Kind.Zero, flags: FLAG_SYNC | FLAG_FUA }));
  assert.ok(betweenSeqs({ kind: Kind.SyncBegin, flags: 0 }));
  assert.ok(betweenSeqs({ kind: Kind.SyncEnd, flags: 0 }));
  for (const kind of [Kind.Write, Kind.Trim, Kind.Zero, Kind.Flush]) {
    assert.not.ok(betweenSeqs({ kind, flags: FLAG_FUA | FLAG_MAY_TRIM }));
  }
  // the flag survives the codec
  const h = header({ flags: FLAG_SYNC | FLAG_FUA, length: 4 });
  assert.is(decodeHeader(encodeRecord(h, new Uint8Array(4)), MAX).flags, FLAG_SYNC | FLAG_FUA);
});

codec("encodeRecord refuses a payload whose size does not match the header", () => {
  assert.throws(() => encodeRecord(header({ length: 10 }), new Uint8Array(9)));
  assert.throws(() => encodeRecord(header({ length: 10 })));
  assert.throws(() => encodeRecord(header({ kind: Kind.Trim, length: 10 }), new Uint8Array(10)));
});

codec("a record inside a larger buffer (non-zero byteOffset) is written and read in place", () => {
  const p = payload(300, 9);
  const h = header({ length: 300, seq: 5 });
  const big = new Uint8Array(11 + HEADER_SIZE + 300 + 13).fill(0xee);
  const view = big.subarray(11, 11 + HEADER_SIZE + 300);
  view.set(p, HEADER_SIZE);
  writeHeader(view, h);
  assert.equal(decodeHeader(view, MAX), h);
  assert.ok(payloadIntact(view, h));
  assert.equal(view, encodeRecord(h, p));
  // the bytes around it are untouched
  assert.ok(big.subarray(0, 11).every((x) => x === 0xee));
  assert.ok(big.subarray(11 + HEADER_SIZE + 300).every((x) => x === 0xee));
  restamp(view, 99, 4242);
  assert.is(decodeHeader(view, MAX).volume, 99);
  assert.ok(big.subarray(0, 11).every((x) => x === 0xee));
});

// ---------------------------------------------------------------------------
const integrity = suite("record integrity");

integrity("every single flipped bit in the header is detected", () => {
  const { b } = writeRecord(64, { pos: 777 });
  let detectedByHeader = 0;
  for (let bit = 0; bit < HEADER_SIZE * 8; bit++) {
    const c = b.slice();
    c[bit >> 3] ^= 1 << (bit & 7);
    let detected = false;
    try {
      const h = decodeHeader(c, MAX);
      detected = !payloadIntact(c, h);
    } catch (e) {
      assert.instance(e, RecordError);
      detected = true;
      detectedByHeader++;
    }
    assert.ok(detected, `bit ${bit} of the header flipped unnoticed`);
  }
  // the header checksum covers all header bytes, so decodeHeader itself catches them
  assert.is(detectedByHeader, HEADER_SIZE * 8);
});

integrity("every single flipped bit in the payload is detected by payloadIntact", () => {
  const { b } = writeRecord(100);
  for (let bit = 0; bit < 100 * 8; bit++) {
    const c = b.slice();
    c[HEADER_SIZE + (bit >> 3)] ^= 1 << (bit & 7);
    const h = decodeHeader(c, MAX); // the header itself is intact
    assert.not.ok(payloadIntact(c, h), `payload bit ${bit} flipped unnoticed`);
  }
});

integrity("multi-byte damage and a swapped payload are detected", () => {
  const a = writeRecord(256, { seq: 1 });
  const b = writeRecord(256, { seq: 2 });
  // same length, other bytes: the payload sum tells them apart
  const mixed = a.b.slice();
  mixed.set(payload(256, 1234), HEADER_SIZE);
  assert.not.ok(payloadIntact(mixed, decodeHeader(mixed, MAX)));
  // a header glued to another record's payload
  const glued = new Uint8Array(a.b.length);
  glued.set(a.b.subarray(0, HEADER_SIZE));
  glued.set(payload(256, 77), HEADER_SIZE);
  assert.not.ok(payloadIntact(glued, decodeHeader(glued, MAX)));
  assert.ok(payloadIntact(b.b, decodeHeader(b.b, MAX)));
});

integrity("a truncated payload is not intact; a truncated header is a RecordError", () => {
  const { b } = writeRecord(100);
  const h = decodeHeader(b, MAX);
  assert.not.ok(payloadIntact(b.subarray(0, b.length - 1), h));
  assert.not.ok(payloadIntact(b.subarray(0, HEADER_SIZE), h));
  throwsRecordError(() => decodeHeader(b.subarray(0, HEADER_SIZE - 1), MAX), /truncated/);
  throwsRecordError(() => decodeHeader(new Uint8Array(0), MAX), /truncated/);
});

integrity("bad magic and an all-zero header are RecordErrors", () => {
  const { b } = writeRecord(8);
  const c = b.slice();
  c[0] = 0x00;
  throwsRecordError(() => decodeHeader(c, MAX), /magic/);
  throwsRecordError(() => decodeHeader(new Uint8Array(HEADER_SIZE), MAX));
});

integrity("an unknown kind with a valid header checksum is a RecordError", () => {
  for (const kind of [0, 8, 9, 200, 255]) {
    const b = new Uint8Array(HEADER_SIZE);
    writeHeader(b, header({ kind: kind as Kind, length: 0 }));
    throwsRecordError(() => decodeHeader(b, MAX), /kind/);
  }
});

integrity("a write longer than maxLength is refused; other kinds may describe longer ranges", () => {
  const { b } = writeRecord(1000);
  assert.is(decodeHeader(b, 1000).length, 1000);
  throwsRecordError(() => decodeHeader(b, 999), /too large/);
  // a header claiming a huge write (payload would not be read) is refused before the payload is
  const huge = new Uint8Array(HEADER_SIZE);
  writeHeader(huge, header({ length: 0 }));
  const v = new DataView(huge.buffer);
  v.setUint32(12, MAX + 1);
  // reseal the header so only the length check can fire
  restampLength(huge);
  throwsRecordError(() => decodeHeader(huge, MAX), /too large/);
  const trim = encodeRecord(header({ kind: Kind.Trim, length: 0xffffffff }));
  assert.is(decodeHeader(trim, MAX).length, 0xffffffff);
});

/** Re-seals a header after a manual edit, using restamp with the header's own volume and pos. */
function restampLength(b: Uint8Array): void {
  const v = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  restamp(b, v.getUint32(8), Number(v.getBigUint64(40)));
}

// ---------------------------------------------------------------------------
const stamp = suite("restamp");

stamp("restamp changes volume and position, keeps everything else and the payload sum valid", () => {
  const { h, b, p } = writeRecord(2048, { volume: 3, pos: 0 });
  const sumBefore = payloadSum(b).slice();
  restamp(b, 12, 987654321012);
  const d = decodeHeader(b, MAX);
  assert.is(d.volume, 12);
  assert.is(d.pos, 987654321012);
  assert.equal({ ...d, volume: h.volume, pos: h.pos }, h);
  assert.ok(payloadIntact(b, d));
  assert.equal(payloadSum(b), sumBefore);
  assert.equal(b.subarray(HEADER_SIZE), p);
});

stamp("a restamped record equals one encoded with the new volume and position", () => {
  const { h, b, p } = writeRecord(333, { volume: 1, pos: 5 });
  restamp(b, 2, 6);
  assert.equal(b, encodeRecord({ ...h, volume: 2, pos: 6 }, p));
});

stamp("restamp does not repair a damaged payload", () => {
  const { b } = writeRecord(64);
  b[HEADER_SIZE + 10] ^= 0x40;
  restamp(b, 1, 2);
  assert.not.ok(payloadIntact(b, decodeHeader(b, MAX)));
});

stamp("a bit flipped after restamp is still detected", () => {
  const { b } = writeRecord(16);
  restamp(b, 4, 4096);
  for (const at of [4, 8, 12, 20, 40, 47, 50, 70]) {
    const c = b.slice();
    c[at] ^= 1;
    throwsRecordError(() => decodeHeader(c, MAX));
  }
});

codec.run();
integrity.run();
stamp.run();
