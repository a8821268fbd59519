// Helpers for the property-based fuzz tests (fast-check): the run budget, byte
// mutations, a chunking fake reader, the properties shared by the real fuzzers and
// the planted-bug demonstration (tests/fuzz-planted.test.ts runs the very same
// properties against deliberately broken parsers), and recording proxies that
// capture what one side of a connection sent (replay tests).
//
// Budget: FUZZ_RUNS sets the number of runs of the pure-parser properties (default
// per call site, chosen so that a file stays well under 30 s in CI); socket-level
// properties run a fixed fraction of it. FUZZ_SEED replays a run fast-check reported.
import fc from "fast-check";
import dgram from "node:dgram";
import type { Readable } from "../../src/io/conn-reader.ts";
import { ConnReader } from "../../src/io/conn-reader.ts";
import {
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  decodeRequest,
  MAX_PAYLOAD,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  type validateRequest,
} from "./nbd-protocol.ts";
import {
  type Frame,
  FRAME_HEADER,
  FrameError,
  frameLimit,
  FrameType,
  type readFrame,
} from "../../src/wire/frames.ts";
import {
  encodeHeartbeat,
  type Heartbeat,
  type openHeartbeat,
  ReplayGuard,
} from "../../src/heartbeat/codec.ts";

export { fc };

// ---------------------------------------------------------------------------
// budget and parameters

/**
 * Runs for one property: FUZZ_RUNS × scale when FUZZ_RUNS is set (a longer budget
 * on demand), otherwise `ciDefault`.
 */
export function fuzzRuns(ciDefault: number, scale = 1): number {
  const env = Number(Deno.env.get("FUZZ_RUNS") ?? "");
  if (Number.isFinite(env) && env > 0) return Math.max(1, Math.round(env * scale));
  return ciDefault;
}

/** fast-check parameters: the run count, and FUZZ_SEED when given (to replay a reported failure). */
export function fcParams<T = void>(numRuns: number, extra: fc.Parameters<T> = {}): fc.Parameters<T> {
  const seed = Deno.env.get("FUZZ_SEED");
  return { numRuns, includeErrorInReport: true, ...(seed ? { seed: Number(seed) } : {}), ...extra };
}

// ---------------------------------------------------------------------------
// bytes

/** A record frame of a site stream around a record's bytes. */
export function recordFrame(body: Uint8Array): Uint8Array {
  const b = new Uint8Array(FRAME_HEADER + body.length);
  new DataView(b.buffer).setUint32(0, 1 + body.length);
  b[4] = FrameType.Record;
  b.set(body, FRAME_HEADER);
  return b;
}

export function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function flipBit(b: Uint8Array, bit: number): Uint8Array {
  const out = b.slice();
  out[bit >> 3] ^= 1 << (bit & 7);
  return out;
}

export function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** One edit of a byte string; positions are taken modulo the current length. */
export type Mutation =
  | { op: "flip"; at: number; bit: number }
  | { op: "set"; at: number; value: number }
  | { op: "truncate"; at: number }
  | { op: "insert"; at: number; bytes: Uint8Array }
  | { op: "delete"; at: number; n: number }
  | { op: "extend"; bytes: Uint8Array }
  | { op: "duplicate"; at: number; n: number };

export function mutationArb(maxInsert = 16): fc.Arbitrary<Mutation> {
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ op: fc.constant("flip" as const), at: fc.nat(), bit: fc.nat(7) }) },
    {
      weight: 2,
      arbitrary: fc.record({
        op: fc.constant("set" as const),
        at: fc.nat(),
        value: fc.constantFrom(0, 0xff, 0x7f, 0x80, 1),
      }),
    },
    { weight: 1, arbitrary: fc.record({ op: fc.constant("truncate" as const), at: fc.nat() }) },
    {
      weight: 1,
      arbitrary: fc.record({
        op: fc.constant("insert" as const),
        at: fc.nat(),
        bytes: fc.uint8Array({ minLength: 1, maxLength: maxInsert }),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        op: fc.constant("delete" as const),
        at: fc.nat(),
        n: fc.integer({ min: 1, max: 8 }),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        op: fc.constant("extend" as const),
        bytes: fc.uint8Array({ minLength: 1, maxLength: maxInsert }),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        op: fc.constant("duplicate" as const),
        at: fc.nat(),
        n: fc.integer({ min: 1, max: 64 }),
      }),
    },
  );
}

export function applyMutation(b: Uint8Array, m: Mutation): Uint8Array {
  const len = b.length;
  switch (m.op) {
    case "flip":
      return len === 0 ? b : flipBit(b, (m.at % len) * 8 + m.bit);
    case "set": {
      if (len === 0) return b;
      const out = b.slice();
      out[m.at % len] = m.value;
      return out;
    }
    case "truncate":
      return b.slice(0, len === 0 ? 0 : m.at % len);
    case "insert": {
      const at = m.at % (len + 1);
      return concat(b.subarray(0, at), m.bytes, b.subarray(at));
    }
    case "delete": {
      if (len === 0) return b;
      const at = m.at % len;
      return concat(b.subarray(0, at), b.subarray(Math.min(len, at + m.n)));
    }
    case "extend":
      return concat(b, m.bytes);
    case "duplicate": {
      if (len === 0) return b;
      const at = m.at % len;
      const piece = b.subarray(at, Math.min(len, at + m.n));
      return concat(b.subarray(0, at), piece, b.subarray(at));
    }
  }
}

export function applyMutations(b: Uint8Array, ms: Mutation[]): Uint8Array {
  return ms.reduce(applyMutation, b);
}

/** A byte string from `base`, edited by 1..maxEdits mutations. */
export function mutatedArb(base: fc.Arbitrary<Uint8Array>, maxEdits = 4): fc.Arbitrary<Uint8Array> {
  return fc.tuple(base, fc.array(mutationArb(), { minLength: 1, maxLength: maxEdits })).map(([b, ms]) =>
    applyMutations(b, ms)
  );
}

/**
 * A stream over `data` that hands out at most chunks[i % chunks.length] bytes per
 * read (fewer if the caller's buffer is smaller), asynchronously, then null.
 */
export class FakeReader implements Readable {
  at = 0;
  private i = 0;
  constructor(private readonly data: Uint8Array, private readonly chunks: number[] = [1 << 30]) {}
  async read(p: Uint8Array): Promise<number | null> {
    await Promise.resolve();
    if (this.at >= this.data.length) return null;
    const n = Math.min(p.length, this.chunks[this.i++ % this.chunks.length], this.data.length - this.at);
    p.set(this.data.subarray(this.at, this.at + n));
    this.at += n;
    return n;
  }
}

export const chunkingArb: fc.Arbitrary<number[]> = fc.oneof(
  fc.constant<number[]>([1 << 30]),
  fc.constant<number[]>([1]),
  fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 6 }),
);

// ---------------------------------------------------------------------------
// NBD request headers (shared by tests/fuzz-nbd.test.ts and tests/fuzz-planted.test.ts)

/** A request header as raw fields: the offset is a full u64 (bigint), the magic may be wrong. */
export interface RawRequest {
  magic: number;
  flags: number;
  type: number;
  handle: bigint;
  offset: bigint;
  length: number;
}

export function encodeRaw(r: RawRequest): Uint8Array {
  const b = new Uint8Array(REQUEST_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, r.magic >>> 0);
  v.setUint16(4, r.flags);
  v.setUint16(6, r.type);
  v.setBigUint64(8, BigInt.asUintN(64, r.handle));
  v.setBigUint64(16, BigInt.asUintN(64, r.offset));
  v.setUint32(24, r.length >>> 0);
  return b;
}

export function decodeRaw(b: Uint8Array, at = 0): RawRequest {
  const v = new DataView(b.buffer, b.byteOffset + at, REQUEST_SIZE);
  return {
    magic: v.getUint32(0),
    flags: v.getUint16(4),
    type: v.getUint16(6),
    handle: v.getBigUint64(8),
    offset: v.getBigUint64(16),
    length: v.getUint32(24),
  };
}

/** Lengths worth trying (a fuzzer's dictionary): block sizes, powers of two, the limits and their neighbours. */
export const interestingLengths = [
  0,
  1,
  511,
  512,
  513,
  4095,
  4096,
  4097,
  0xffff,
  0x10000,
  0x10001,
  1 << 20,
  MAX_PAYLOAD - 1,
  MAX_PAYLOAD,
  MAX_PAYLOAD + 1,
  0x7fffffff,
  0xffffffff,
];

export const exportSizeArb: fc.Arbitrary<number> = fc.oneof(
  fc.constantFrom(0, 512, 4096, 4 << 20, 1 << 30, 2 ** 40, 2 ** 52),
  fc.integer({ min: 0, max: 2 ** 52 }),
);

export const lengthArb: fc.Arbitrary<number> = fc.oneof(
  fc.constantFrom(...interestingLengths),
  fc.integer({ min: 0, max: 0xffffffff }),
  fc.integer({ min: 0, max: 70_000 }),
);

/** Request headers for an export of `size` bytes, biased to the end of the export and to the limits. */
export function requestArb(size: number): fc.Arbitrary<RawRequest> {
  const offsetFor = (length: number): fc.Arbitrary<bigint> =>
    fc.oneof(
      // right at the end of the export: in range, exactly at the end, or just past it
      fc.integer({ min: -4, max: 4 }).map((d) => {
        const o = BigInt(size) - BigInt(length) + BigInt(d);
        return o < 0n ? 0n : o;
      }),
      fc.bigInt(0n, 2n ** 64n - 1n),
      fc.constantFrom(
        0n,
        BigInt(size),
        BigInt(size) + 1n,
        2n ** 53n - 1n,
        2n ** 53n,
        2n ** 63n,
        2n ** 64n - 1n,
      ),
      fc.bigInt(0n, BigInt(Math.max(0, size))),
    );
  return fc.record({
    magic: fc.oneof(
      { weight: 9, arbitrary: fc.constant(REQUEST_MAGIC) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
    ),
    flags: fc.oneof(
      {
        weight: 4,
        arbitrary: fc.constantFrom(0, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE),
      },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
    ),
    type: fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
    ),
    handle: fc.bigInt(0n, 2n ** 64n - 1n),
    length: lengthArb,
  }).chain((r) => offsetFor(r.length).map((offset) => ({ ...r, offset })));
}

const MUTATING = new Set([CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES]);

/**
 * The bounds property of request validation: a header is decoded without throwing,
 * any request with offset + length > size is refused (never 0), and every request
 * accepted that changes data lies within the export and the export is writable.
 * Sums are done on the raw u64 fields (bigint), independently of the module.
 */
export function requestBoundsProperty(validate: typeof validateRequest): fc.IPropertyWithHooks<
  [[number, RawRequest, boolean, number]]
> {
  return fc.property(
    exportSizeArb.chain((size) => fc.tuple(fc.constant(size), requestArb(size), fc.boolean(), fc.nat(8))),
    ([size, raw, readOnly, pad]) => {
      const buf = new Uint8Array(pad + REQUEST_SIZE);
      buf.set(encodeRaw(raw), pad);
      const r = decodeRequest(buf, pad);
      if (raw.magic !== REQUEST_MAGIC) {
        if (r !== undefined) throw new Error("a header with a wrong magic was decoded");
        return;
      }
      if (!r) throw new Error("a header with the right magic was not decoded");
      if (
        r.type !== raw.type || r.flags !== raw.flags || r.length !== raw.length || r.handle !== raw.handle
      ) {
        throw new Error(`decoded fields differ: ${JSON.stringify({ ...r, handle: String(r.handle) })}`);
      }
      const code = validate(r, size, readOnly);
      const end = raw.offset + BigInt(raw.length);
      if (code !== 0) return;
      if (end > BigInt(size)) {
        throw new Error(`request ${describeRaw(raw)} past the end of a ${size}-byte export was accepted`);
      }
      if ((raw.flags & ~(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE)) !== 0) {
        throw new Error(`request with unknown flags 0x${raw.flags.toString(16)} was accepted`);
      }
      if (![CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES].includes(raw.type)) {
        throw new Error(`unknown command ${raw.type} was accepted`);
      }
      if ((raw.type === CMD_READ || raw.type === CMD_WRITE) && raw.length > MAX_PAYLOAD) {
        throw new Error(`${raw.length}-byte payload over the maximum was accepted`);
      }
      if (raw.type === CMD_FLUSH && (raw.offset !== 0n || raw.length !== 0)) {
        throw new Error("a flush with an offset or a length was accepted");
      }
      if (MUTATING.has(raw.type) && readOnly) {
        throw new Error(`${describeRaw(raw)} accepted on a read-only export`);
      }
    },
  );
}

export function describeRaw(r: RawRequest): string {
  return `{type ${r.type}, flags 0x${r.flags.toString(16)}, offset ${r.offset}, length ${r.length}}`;
}

// ---------------------------------------------------------------------------
// agent-link frames (shared by tests/fuzz-replication.test.ts and tests/fuzz-planted.test.ts)

/** What readFrame must make of a byte stream, per the framing description (u32 length of type + body, u8 type). */
export function referenceFrames(
  data: Uint8Array,
  maxFrame: number,
): { frames: Frame[]; end: "clean" | "error" } {
  const frames: Frame[] = [];
  let at = 0;
  while (true) {
    if (at === data.length) return { frames, end: "clean" };
    if (data.length - at < FRAME_HEADER) return { frames, end: "error" };
    const len = new DataView(data.buffer, data.byteOffset + at, 4).getUint32(0);
    const type = data[at + 4];
    if (len < 1) return { frames, end: "error" };
    if (len > frameLimit(type, maxFrame)) return { frames, end: "error" };
    if (data.length - at - FRAME_HEADER < len - 1) return { frames, end: "error" };
    frames.push({ type, body: data.slice(at + FRAME_HEADER, at + FRAME_HEADER + len - 1) });
    at += FRAME_HEADER + len - 1;
  }
}

function frameBytes(type: number, body: Uint8Array, lenDelta = 0): Uint8Array {
  const b = new Uint8Array(FRAME_HEADER + body.length);
  new DataView(b.buffer).setUint32(0, Math.max(0, 1 + body.length + lenDelta));
  b[4] = type;
  b.set(body, FRAME_HEADER);
  return b;
}

/** Streams of frames, well-formed or not, with lengths biased to the limits (maxFrame small, so they are reachable). */
export const frameStreamArb: fc.Arbitrary<{ data: Uint8Array; maxFrame: number; chunks: number[] }> = fc
  .record({
    maxFrame: fc.oneof(fc.integer({ min: 1, max: 600 }), fc.constantFrom(1, 73, 4096)),
    chunks: chunkingArb,
  })
  .chain(({ maxFrame, chunks }) => {
    const typeArb = fc.oneof(
      fc.constantFrom(
        FrameType.Record,
        FrameType.RecordDeflated,
        FrameType.ChunkOp,
        FrameType.ChunkReply,
        FrameType.Hello,
        FrameType.Open,
        FrameType.Hashes,
        FrameType.Accepted,
      ),
      fc.integer({ min: 0, max: 255 }),
    );
    // a frame whose body is around the limit (maxFrame − 1 bytes of body is the largest allowed)
    const nearLimit = fc.record({
      type: typeArb,
      size: fc.integer({ min: -3, max: 2 }).map((d) => Math.max(0, maxFrame - 1 + d)),
      lenDelta: fc.constant(0),
    });
    const small = fc.record({
      type: typeArb,
      size: fc.integer({ min: 0, max: 40 }),
      lenDelta: fc.oneof({ weight: 5, arbitrary: fc.constant(0) }, fc.integer({ min: -3, max: 3 })),
    });
    const frame = fc.oneof(nearLimit, small).chain(({ type, size, lenDelta }) =>
      fc.uint8Array({ minLength: size, maxLength: size }).map((body) => frameBytes(type, body, lenDelta))
    );
    const raw = fc.uint8Array({ maxLength: 64 });
    const data = fc.oneof(
      { weight: 6, arbitrary: fc.array(frame, { maxLength: 5 }).map((fs) => concat(...fs)) },
      {
        weight: 2,
        arbitrary: mutatedArb(fc.array(frame, { minLength: 1, maxLength: 4 }).map((fs) => concat(...fs))),
      },
      { weight: 1, arbitrary: raw },
    );
    return data.map((d) => ({ data: d, maxFrame, chunks }));
  });

/**
 * readFrame, called until the end of the stream, finds exactly the frames the
 * framing description gives, throws only FrameError, and throws it exactly when the
 * stream is malformed (cut mid-frame, empty or oversized frame).
 */
export function readFrameProperty(read: typeof readFrame): fc.IAsyncPropertyWithHooks<
  [{ data: Uint8Array; maxFrame: number; chunks: number[] }]
> {
  return fc.asyncProperty(frameStreamArb, async ({ data, maxFrame, chunks }) => {
    const want = referenceFrames(data, maxFrame);
    const reader = new ConnReader(new FakeReader(data, chunks), 4096);
    const got: Frame[] = [];
    let end: "clean" | "error";
    try {
      while (true) {
        const f = await read(reader, maxFrame);
        if (!f) break;
        got.push(f);
        if (got.length > want.frames.length) break;
      }
      end = "clean";
    } catch (e) {
      if (!(e instanceof FrameError)) throw new Error(`readFrame threw ${String(e)}, not a FrameError`);
      end = "error";
    }
    if (got.length !== want.frames.length || end !== want.end) {
      throw new Error(
        `readFrame read ${got.length} frame(s) then ${end}; the format gives ${want.frames.length} then ${want.end}`,
      );
    }
    for (let i = 0; i < got.length; i++) {
      if (got[i].type !== want.frames[i].type || !bytesEqual(got[i].body, want.frames[i].body)) {
        throw new Error(`frame ${i} differs from the format's`);
      }
    }
  });
}

// ---------------------------------------------------------------------------
// heartbeats (shared by tests/fuzz-heartbeat.test.ts and tests/fuzz-planted.test.ts)

export const HB_SECRET = new TextEncoder().encode("fuzz-heartbeat-secret-0123456789");
export const HB_AGENT = "app-1";
export const HB_WALL = 1_700_000_000_000;
/** The receiver's clocks for the heartbeat properties (its monotonic clock stands still). */
export const HB_NOW = { wallMs: HB_WALL, monoMs: 0 };

export const heartbeatArb: fc.Arbitrary<Heartbeat> = fc.record({
  agentId: fc.constant(HB_AGENT),
  boot: fc.bigInt(0n, 2n ** 64n - 1n),
  seq: fc.oneof(fc.nat(1000), fc.constantFrom(0, Number.MAX_SAFE_INTEGER), fc.maxSafeNat()),
  sentAtMs: fc.integer({ min: HB_WALL - 60_000, max: HB_WALL + 60_000 }),
  status: fc.record({ healthy: fc.boolean(), detail: fc.string({ maxLength: 60 }) }),
});

/** Any single-bit flip of a valid datagram is refused by openHeartbeat (which never throws). */
export function heartbeatBitFlipProperty(
  open: typeof openHeartbeat,
): fc.IPropertyWithHooks<[Heartbeat, number]> {
  return fc.property(heartbeatArb, fc.nat(), (hb, bitSeed) => {
    const secrets = new Map([[HB_AGENT, HB_SECRET]]);
    const wire = encodeHeartbeat(hb, HB_SECRET);
    const bit = bitSeed % (wire.length * 8);
    const bad = flipBit(wire, bit);
    const r = open(bad, secrets, new ReplayGuard(), HB_NOW);
    if (r.ok) throw new Error(`datagram with bit ${bit} (byte ${bit >> 3}) flipped was accepted`);
    if (!open(wire, secrets, new ReplayGuard(), HB_NOW).ok) {
      throw new Error("the unmodified datagram was refused");
    }
  });
}

// ---------------------------------------------------------------------------
// recording proxies

/** What passed through one proxied connection, in each direction. */
export interface Capture {
  up: Uint8Array[];
  down: Uint8Array[];
  /** Set once both directions ended. */
  closed: boolean;
}

export function joined(chunks: Uint8Array[]): Uint8Array {
  return concat(...chunks);
}

/**
 * A proxy (unix socket or TCP) that records every byte of every connection in
 * both directions. With `duplicateBatch` armed, the agent's next sealed batch going
 * client → server is forwarded twice: an in-session replay by a man in the middle.
 */
export class RecordingProxy {
  private listener: Deno.Listener;
  private conns = new Set<Deno.Conn>();
  readonly captures: Capture[] = [];
  readonly port: number;
  /** Sends the agent's next sealed batch twice (the agent link: a replay inside the session). */
  duplicateBatch = false;
  duplicated = 0;

  constructor(
    private readonly target: { hostname: string; port: number } | { path: string },
    listen: { path: string } | { port: number },
  ) {
    this.listener = "path" in listen
      ? Deno.listen({ transport: "unix", path: listen.path })
      : Deno.listen({ hostname: "127.0.0.1", port: listen.port });
    this.port = "path" in listen ? 0 : (this.listener.addr as Deno.NetAddr).port;
    this.accept();
  }

  private async accept(): Promise<void> {
    try {
      for await (const c of this.listener) this.serve(c);
    } catch { /* closed */ }
  }

  private async serve(c: Deno.Conn): Promise<void> {
    this.conns.add(c);
    let up: Deno.Conn;
    try {
      up = "path" in this.target
        ? await Deno.connect({ transport: "unix", path: this.target.path })
        : await Deno.connect(this.target);
    } catch {
      c.close();
      return;
    }
    this.conns.add(up);
    const cap: Capture = { up: [], down: [], closed: false };
    this.captures.push(cap);
    await Promise.allSettled([this.pump(c, up, cap.up, true), this.pump(up, c, cap.down, false)]);
    cap.closed = true;
    for (const x of [c, up]) {
      this.conns.delete(x);
      try {
        x.close();
      } catch { /* closed */ }
    }
  }

  private async pump(from: Deno.Conn, to: Deno.Conn, log: Uint8Array[], forward: boolean): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    const framer = forward ? new BatchTracker() : undefined;
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        const chunk = buf.slice(0, n);
        log.push(chunk);
        let out: Uint8Array = chunk;
        if (framer) {
          const extra: Uint8Array[] = [];
          for (const b of framer.push(chunk)) {
            if (this.duplicateBatch && b.sealed) {
              this.duplicateBatch = false;
              this.duplicated++;
              extra.push(b.bytes);
            }
          }
          // the duplicate goes right after the chunk that completed the batch: still a boundary
          if (extra.length) out = concat(chunk, ...extra);
        }
        let at = 0;
        while (at < out.length) at += await to.write(out.subarray(at));
      }
    } catch { /* either side closed */ }
    try {
      to.closeWrite();
    } catch { /* closed */ }
  }

  close(): void {
    try {
      this.listener.close();
    } catch { /* closed */ }
    for (const c of this.conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
  }
}

/**
 * Follows the agent link's units client → gateway over TCP: the hello (a frame: u32 length of
 * type and body), then sealed batches (u32 n, n bytes, a 16-byte tag).
 */
class BatchTracker {
  private buf: Uint8Array = new Uint8Array(0);
  private units = 0;

  push(chunk: Uint8Array): { bytes: Uint8Array; sealed: boolean }[] {
    this.buf = concat(this.buf, chunk);
    const out: { bytes: Uint8Array; sealed: boolean }[] = [];
    let at = 0;
    while (this.buf.length - at >= 4) {
      const n = new DataView(this.buf.buffer, this.buf.byteOffset + at, 4).getUint32(0);
      const sealed = this.units > 0;
      const size = 4 + n + (sealed ? 16 : 0);
      if (this.buf.length - at < size) break;
      out.push({ bytes: this.buf.slice(at, at + size), sealed });
      this.units++;
      at += size;
    }
    this.buf = this.buf.slice(at);
    // a duplicate inserted after this chunk only lands on a boundary if nothing is left over
    return this.buf.length === 0 ? out : [];
  }
}

/**
 * A UDP relay: forwards every datagram of its clients to `target` (while `forwarding`) and records
 * it; what the target sends back (the gateway's link probes) goes to the client that sent last.
 */
export class UdpRelay {
  readonly datagrams: { at: number; bytes: Uint8Array }[] = [];
  forwarding = true;
  private socket = dgram.createSocket("udp4");
  private client: { address: string; port: number } | undefined;
  port = 0;

  private constructor(private target: { host: string; port: number }) {}

  static async start(target: { host: string; port: number }): Promise<UdpRelay> {
    const r = new UdpRelay(target);
    r.socket.on("message", (msg, from) => {
      const bytes = new Uint8Array(msg);
      if (from.port === r.target.port && from.address === r.target.host) {
        if (r.client) r.socket.send(bytes, r.client.port, r.client.address);
        return;
      }
      r.client = { address: from.address, port: from.port };
      r.datagrams.push({ at: Date.now(), bytes });
      if (r.forwarding) r.socket.send(bytes, r.target.port, r.target.host);
    });
    await new Promise<void>((resolve) => r.socket.bind(0, "127.0.0.1", () => resolve()));
    r.port = r.socket.address().port;
    return r;
  }

  retarget(target: { host: string; port: number }): void {
    this.target = target;
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}

/** Sends datagrams to host:port from a fresh socket, `gapMs` apart. */
export async function sendDatagrams(
  datagrams: Uint8Array[],
  target: { host: string; port: number },
  gapMs = 0,
): Promise<void> {
  const s = dgram.createSocket("udp4");
  try {
    for (const d of datagrams) {
      await new Promise<void>((resolve, reject) =>
        s.send(d, target.port, target.host, (err) => err ? reject(err) : resolve())
      );
      if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
    }
  } finally {
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}

/** Writes all of b. */
export async function writeAll(conn: Deno.Conn, b: Uint8Array): Promise<void> {
  let at = 0;
  while (at < b.length) at += await conn.write(b.subarray(at));
}

/**
 * Reads everything until the peer closes (or `timeoutMs` passes: then `timedOut`).
 * The connection is closed afterwards either way.
 */
export async function readToEnd(
  conn: Deno.Conn,
  timeoutMs: number,
): Promise<{ bytes: Uint8Array; timedOut: boolean }> {
  const chunks: Uint8Array[] = [];
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      conn.close();
    } catch { /* closed */ }
  }, timeoutMs);
  const buf = new Uint8Array(64 * 1024);
  try {
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
  } catch { /* reset or closed by the timer */ }
  clearTimeout(timer);
  try {
    conn.close();
  } catch { /* closed */ }
  return { bytes: concat(...chunks), timedOut };
}

/** True while the process has not exited. */
export function alive(proc: { exited: Promise<unknown> }): Promise<boolean> {
  return Promise.race([
    proc.exited.then(() => false),
    new Promise<boolean>((r) => setTimeout(() => r(true), 0)),
  ]);
}

/**
 * Removes the bulky files a test leaves in its directory (journal rings, images,
 * dirty maps) and keeps the logs, unless KEEP_TEST_OUTPUT is set. Disk space on
 * shared CI machines is finite; the logs are what a failure is read from.
 */
export async function dropBulk(dir: string | undefined): Promise<void> {
  if (!dir || Deno.env.get("KEEP_TEST_OUTPUT")) return;
  const walk = async (d: string): Promise<void> => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(d));
    } catch {
      return;
    }
    for (const e of entries) {
      const p = `${d}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else if (/\.(img|ring|dirty)$/.test(e.name)) await Deno.remove(p).catch(() => {});
    }
  };
  await walk(dir);
}

/** Makes fast-check print a byte string briefly (length and a hex prefix) in its reports. */
export function brief<T extends Uint8Array>(b: T, max = 48): T {
  Object.defineProperty(b, fc.toStringMethod, {
    value: () => `bytes(${b.length}: ${hex(b.subarray(0, max))}${b.length > max ? "…" : ""})`,
  });
  return b;
}
