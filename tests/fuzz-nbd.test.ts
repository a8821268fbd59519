// Fuzzing the NBD side of the agent (fast-check). Pure: the option negotiation and
// the request decoder/validator never throw, answer well-formed replies (decoded
// here from the spec, NetworkBlockDevice/nbd doc/proto.md), and never accept a
// request outside the export. Socket level: random and mutated byte streams, before,
// during and after the handshake, sent to a real agent's NBD socket: the agent never
// dies, answers exactly what the protocol says, and nothing outside the ranges a valid
// request could write changes (on its disk nor in the gateway's mirror).
//
// Budget: FUZZ_RUNS (pure properties; socket cases are a quarter of it), FUZZ_SEED.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  alive,
  applyMutations,
  brief,
  bytesEqual,
  concat,
  decodeRaw,
  dropBulk,
  encodeRaw,
  fc,
  fcParams,
  fuzzRuns,
  hex,
  mutatedArb,
  mutationArb,
  type RawRequest,
  readToEnd,
  requestArb,
  requestBoundsProperty,
  writeAll,
} from "./lib/fuzz.ts";
import { startPair, waitEqual, waitMirrorCaughtUp } from "./lib/cluster.ts";
import { NbdClient } from "./lib/nbd-client.ts";
import {
  CMD_DISC,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  decodeRequest,
  type ExportInfo,
  IHAVEOPT,
  MAX_OPTION_LENGTH,
  MAX_PAYLOAD,
  Negotiation,
  type OptionOutcome,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  validateRequest,
} from "./lib/nbd-protocol.ts";

// --- constants from the NBD spec, spelled out independently of the module ---
const OPT_REPLY_MAGIC = 0x3e889045565a9n;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const OPT_EXPORT_NAME = 1, OPT_ABORT = 2, OPT_LIST = 3, OPT_STARTTLS = 5, OPT_INFO = 6, OPT_GO = 7;
const REP_ACK = 1, REP_SERVER = 2, REP_INFO = 3;
const REP_FLAG_ERROR = 2 ** 31;
const REP_ERR_UNSUP = REP_FLAG_ERROR + 1,
  REP_ERR_POLICY = REP_FLAG_ERROR + 2,
  REP_ERR_INVALID = REP_FLAG_ERROR + 3;
const REP_ERR_UNKNOWN = REP_FLAG_ERROR + 6;
const INFO_EXPORT = 0, INFO_NAME = 1, INFO_DESCRIPTION = 2, INFO_BLOCK_SIZE = 3;
const FLAG_HAS_FLAGS = 1, FLAG_READ_ONLY = 2;
const EPERM = 1, EINVAL = 22, ENOSPC = 28;
const MiB = 1024 * 1024;

const enc = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

const PURE_RUNS = fuzzRuns(3000);
const SOCKET_RUNS = fuzzRuns(900, 1 / 4);

// ---------------------------------------------------------------------------
// generators of option data

const EXPORTS: ExportInfo[] = [
  { name: "vol0", description: "the first volume", size: 4 * MiB, readOnly: false },
  { name: "ro", size: 1000, readOnly: true },
  { name: "données-ü", size: 2 ** 40, readOnly: false },
];
const names = EXPORTS.map((e) => e.name);

function negotiation(exports = EXPORTS): Negotiation {
  return new Negotiation((name) => exports.find((e) => e.name === name), () => exports);
}

/** NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, u16 info requests. */
function infoData(name: Uint8Array, infos: number[]): Uint8Array {
  const b = new Uint8Array(4 + name.length + 2 + 2 * infos.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, name.length);
  b.set(name, 4);
  v.setUint16(4 + name.length, infos.length);
  infos.forEach((t, i) => v.setUint16(4 + name.length + 2 + 2 * i, t));
  return b;
}

const nameArb: fc.Arbitrary<Uint8Array> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...names).map((n) => enc.encode(n)) },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }).map((s) => enc.encode(s)) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 12 }) }, // often invalid UTF-8
);
const infosArb = fc.array(
  fc.oneof(fc.constantFrom(INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE), fc.nat(0xffff)),
  { maxLength: 6 },
);
const goDataArb = fc.tuple(nameArb, infosArb).map(([n, i]) => infoData(n, i));

/** Option data: valid payloads of every option, their mutations, and noise. */
const optionDataArb: fc.Arbitrary<Uint8Array> = fc.oneof(
  { weight: 3, arbitrary: goDataArb },
  { weight: 3, arbitrary: mutatedArb(goDataArb) },
  { weight: 1, arbitrary: nameArb },
  { weight: 1, arbitrary: mutatedArb(nameArb) },
  { weight: 1, arbitrary: fc.constant(new Uint8Array(0)) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 80 }) },
);
const optionNumberArb = fc.oneof(
  { weight: 5, arbitrary: fc.integer({ min: 0, max: 10 }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
);

// ---------------------------------------------------------------------------
// an independent reading of the spec

interface ParsedReply {
  option: number;
  type: number;
  data: Uint8Array;
}

function u16(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint16(at);
}
function u32(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at);
}
function u64(b: Uint8Array, at: number): bigint {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(at);
}

/** One option reply, exactly: u64 magic, u32 option, u32 type, u32 length, data of that length. */
function parseReply(b: Uint8Array, option: number): ParsedReply {
  assert.ok(b.length >= 20, `option reply of ${b.length} bytes`);
  assert.is(u64(b, 0), OPT_REPLY_MAGIC, "option reply magic");
  assert.is(u32(b, 8), option, "the option is echoed");
  assert.is(u32(b, 16), b.length - 20, "the length field equals the data length");
  return { option, type: u32(b, 12), data: b.subarray(20) };
}

/** What a GO/INFO payload asks for, read from the spec, or undefined when malformed. */
function parseGoData(d: Uint8Array): { name: string; infos: number[] } | undefined {
  if (d.length < 6) return undefined;
  const n = u32(d, 0);
  if (4 + n + 2 > d.length) return undefined;
  const count = u16(d, 4 + n);
  if (4 + n + 2 + 2 * count !== d.length) return undefined;
  let name: string;
  try {
    name = strictUtf8.decode(d.subarray(4, 4 + n));
  } catch {
    return undefined;
  }
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(u16(d, 4 + n + 2 + 2 * i));
  return { name, infos };
}

function utf8(b: Uint8Array): string | undefined {
  try {
    return strictUtf8.decode(b);
  } catch {
    return undefined;
  }
}

function checkTransmissionFlags(flags: number, e: ExportInfo): void {
  assert.ok(flags & FLAG_HAS_FLAGS, "HAS_FLAGS");
  assert.is((flags & FLAG_READ_ONLY) !== 0, e.readOnly, "READ_ONLY matches the export");
}

/** Checks one option's outcome against the spec; `noZeroes` as the client flags said. */
function checkOutcome(option: number, data: Uint8Array, out: OptionOutcome, noZeroes: boolean): void {
  assert.ok(Array.isArray(out.replies));
  // NBD_OPT_EXPORT_NAME answers with no option reply at all: size, flags (and 124 zeroes)
  if (option === OPT_EXPORT_NAME) {
    const name = utf8(data);
    const e = EXPORTS.find((x) => x.name === name);
    if (!e) {
      assert.ok(out.close, "an unknown export name closes (the option cannot carry an error)");
      assert.is(out.replies.length, 0);
      assert.is(out.selected, undefined);
      return;
    }
    assert.is(out.selected?.name, e.name);
    assert.is(out.replies.length, 1);
    const r = out.replies[0];
    assert.is(r.length, noZeroes ? 10 : 134);
    assert.is(u64(r, 0), BigInt(e.size));
    checkTransmissionFlags(u16(r, 8), e);
    assert.ok(r.subarray(10).every((x) => x === 0), "zero padding");
    return;
  }
  const replies = out.replies.map((b) => parseReply(b, option));
  for (const r of replies) {
    if (r.type >= REP_FLAG_ERROR) {
      assert.ok(
        [REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID, REP_ERR_UNKNOWN].includes(r.type),
        `error type 0x${r.type.toString(16)}`,
      );
      assert.type(utf8(r.data), "string", "error messages are UTF-8 text");
    } else {
      assert.ok([REP_ACK, REP_SERVER, REP_INFO].includes(r.type), `reply type ${r.type}`);
    }
  }
  const types = replies.map((r) => r.type);
  const isErr = types.length === 1 && types[0] >= REP_FLAG_ERROR;
  const acked = types.length > 0 && types[types.length - 1] === REP_ACK &&
    types.slice(0, -1).every((t) => t !== REP_ACK && t < REP_FLAG_ERROR);
  assert.ok(isErr || acked, `replies end with one ACK or are one error: ${types.map((t) => t.toString(16))}`);
  if (isErr) assert.is(out.selected, undefined, "no export is selected after an error");
  assert.is(out.close === true, option === OPT_ABORT, "only NBD_OPT_ABORT closes");
  switch (option) {
    case OPT_ABORT:
      assert.equal(types, [REP_ACK]);
      return;
    case OPT_LIST:
      if (data.length !== 0) {
        assert.equal(types, [REP_ERR_INVALID]);
        return;
      }
      assert.is(replies.length, EXPORTS.length + 1);
      for (const [i, r] of replies.slice(0, -1).entries()) {
        assert.is(r.type, REP_SERVER);
        assert.is(u32(r.data, 0), r.data.length - 4, "name length");
        assert.is(utf8(r.data.subarray(4)), EXPORTS[i].name);
      }
      return;
    case OPT_STARTTLS:
      assert.equal(types, [REP_ERR_POLICY]);
      return;
    case OPT_INFO:
    case OPT_GO: {
      const want = parseGoData(data);
      const e = want && EXPORTS.find((x) => x.name === want.name);
      if (!want) {
        assert.equal(types, [REP_ERR_INVALID], "malformed GO/INFO data is NBD_REP_ERR_INVALID");
        return;
      }
      if (!e) {
        assert.equal(types, [REP_ERR_UNKNOWN], "unknown export is NBD_REP_ERR_UNKNOWN");
        return;
      }
      assert.ok(acked);
      assert.is(out.selected?.name, option === OPT_GO ? e.name : undefined, "GO selects, INFO does not");
      const infos = new Map<number, Uint8Array>();
      for (const r of replies.slice(0, -1)) {
        assert.is(r.type, REP_INFO);
        const t = u16(r.data, 0);
        assert.not.ok(infos.has(t), `information ${t} sent once`);
        infos.set(t, r.data);
      }
      const ex = infos.get(INFO_EXPORT);
      assert.ok(ex, "NBD_INFO_EXPORT is always sent");
      assert.is(ex!.length, 12);
      assert.is(u64(ex!, 2), BigInt(e.size));
      checkTransmissionFlags(u16(ex!, 10), e);
      const bs = infos.get(INFO_BLOCK_SIZE);
      if (bs) {
        assert.is(bs.length, 14);
        const min = u32(bs, 2), pref = u32(bs, 6), max = u32(bs, 10);
        assert.ok(min >= 1 && (min & (min - 1)) === 0 && min <= pref && pref <= max, "block sizes");
      }
      const nm = infos.get(INFO_NAME);
      if (nm) assert.is(utf8(nm.subarray(2)), e.name);
      if (want.infos.includes(INFO_NAME)) assert.ok(nm, "NBD_INFO_NAME sent when asked");
      for (const t of infos.keys()) {
        assert.ok([INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE].includes(t), `info ${t}`);
      }
      return;
    }
    default:
      assert.equal(types, [REP_ERR_UNSUP], `option ${option} is unsupported`);
  }
}

// ---------------------------------------------------------------------------
const pure = suite("fuzz nbd: pure protocol");

pure(
  "clientFlags: any u32 never throws; accepted exactly when FIXED_NEWSTYLE is set and nothing unknown",
  () => {
    fc.assert(
      fc.property(fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.nat(7)), (flags) => {
        const n = negotiation();
        const r = n.clientFlags(flags);
        const ok = (flags & ~3) === 0 && (flags & 1) === 1;
        assert.is(r === undefined, ok, `flags 0x${flags.toString(16)}`);
        if (ok) assert.is(n.noZeroes, (flags & 2) !== 0);
      }),
      fcParams(PURE_RUNS),
    );
  },
);

pure("option: arbitrary and mutated options never throw and are answered per the spec", () => {
  fc.assert(
    fc.property(optionNumberArb, optionDataArb, fc.boolean(), (option, data, noZeroes) => {
      const n = negotiation();
      assert.is(n.clientFlags(noZeroes ? 3 : 1), undefined);
      checkOutcome(option, data, n.option(option, data), noZeroes);
    }),
    fcParams(PURE_RUNS),
  );
});

pure("option sequences: negotiation goes on after errors and stops at the first close or selection", () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(optionNumberArb, optionDataArb), { maxLength: 8 }), (opts) => {
      const n = negotiation();
      n.clientFlags(3);
      for (const [option, data] of opts) {
        const out = n.option(option, data);
        checkOutcome(option, data, out, true);
        if (out.close || out.selected) break;
      }
    }),
    fcParams(Math.ceil(PURE_RUNS / 3)),
  );
});

pure("decodeRequest + validateRequest: no request past the end is accepted (biased headers)", () => {
  fc.assert(requestBoundsProperty(validateRequest), fcParams(PURE_RUNS * 2));
});

pure("decodeRequest + validateRequest: arbitrary 28-byte headers never throw; codes are NBD errnos", () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: REQUEST_SIZE, maxLength: REQUEST_SIZE }),
      fc.boolean(),
      fc.oneof(fc.nat(), fc.integer({ min: 0, max: 2 ** 52 })),
      fc.boolean(),
      (raw, goodMagic, size, readOnly) => {
        if (goodMagic) new DataView(raw.buffer).setUint32(0, REQUEST_MAGIC);
        const r = decodeRequest(raw);
        const h = decodeRaw(raw);
        if (h.magic !== REQUEST_MAGIC) {
          assert.is(r, undefined);
          return;
        }
        assert.ok(r);
        const code = validateRequest(r!, size, readOnly);
        assert.ok([0, EPERM, EINVAL, ENOSPC].includes(code), `code ${code}`);
        if (h.offset + BigInt(h.length) > BigInt(size)) assert.is.not(code, 0, "past the end accepted");
        if (code === 0 && [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES].includes(h.type)) {
          assert.not.ok(readOnly);
          assert.ok(h.offset + BigInt(h.length) <= BigInt(size));
        }
      },
    ),
    fcParams(PURE_RUNS),
  );
});

pure.run();

// ---------------------------------------------------------------------------
// socket level: a reference of what the server does with a byte stream

const VOLUME = 4 * MiB;
/** Fuzzed requests may only change [SCRATCH, VOLUME); everything before it must stay as written. */
const SCRATCH = 3 * MiB;

/**
 * The error the spec gives a request. A zero-length READ, WRITE, TRIM or WRITE_ZEROES is
 * neither required nor forbidden by the spec: the server may do nothing or refuse it
 * with EINVAL; `zeroLengthOk` in the checks accepts either.
 */
const errnoFor = (r: RawRequest): number => {
  const end = r.offset + BigInt(r.length);
  const past = end > BigInt(VOLUME);
  if (r.flags & ~3) return EINVAL;
  switch (r.type) {
    case CMD_READ:
      return r.length > MAX_PAYLOAD || past ? EINVAL : 0;
    case CMD_WRITE:
      return r.length > MAX_PAYLOAD ? EINVAL : past ? ENOSPC : 0;
    case CMD_WRITE_ZEROES:
      return past ? ENOSPC : 0;
    case CMD_TRIM:
      return past ? EINVAL : 0;
    case CMD_FLUSH:
      return r.offset === 0n && r.length === 0 ? 0 : EINVAL;
    default:
      return EINVAL;
  }
};

interface SimRequest {
  raw: RawRequest;
  /** Where the header starts in the stream. */
  at: number;
  errno: number;
}

interface Simulation {
  /** Bytes the server sends before transmission (greeting and option replies). */
  negotiation: Uint8Array;
  transmission: boolean;
  requests: SimRequest[];
}

/** The agent's export as it describes it (NBD_INFO_DESCRIPTION is the agent's text, not the pure tests'). */
const AGENT_EXPORT: ExportInfo = {
  name: "vol0",
  description: "Continuum protected volume vol0",
  size: VOLUME,
  readOnly: false,
};

/** The spec's fixed newstyle greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE | NO_ZEROES. */
function greeting(): Uint8Array {
  const g = new Uint8Array(18);
  const v = new DataView(g.buffer);
  v.setBigUint64(0, 0x4e42444d41474943n);
  v.setBigUint64(8, IHAVEOPT);
  v.setUint16(16, 0b11);
  return g;
}

/** What the server reads from `stream`, per its framing (the option logic is the pure module's). */
function simulate(stream: Uint8Array): Simulation {
  const out: Uint8Array[] = [greeting()];
  const sim: Simulation = { negotiation: new Uint8Array(0), transmission: false, requests: [] };
  const n = negotiation([AGENT_EXPORT]);
  let at = 0;
  const left = () => stream.length - at;
  const finish = () => {
    sim.negotiation = concat(...out);
    return sim;
  };
  if (left() < 4) return finish();
  if (n.clientFlags(u32(stream, 0)) !== undefined) return finish();
  at = 4;
  while (true) {
    if (left() < 16) return finish();
    if (u64(stream, at) !== IHAVEOPT) return finish();
    const option = u32(stream, at + 8), length = u32(stream, at + 12);
    if (length > MAX_OPTION_LENGTH) return finish();
    if (left() - 16 < length) return finish();
    const o = n.option(option, stream.slice(at + 16, at + 16 + length));
    at += 16 + length;
    out.push(...o.replies);
    if (o.close) return finish();
    if (o.selected) break;
  }
  sim.transmission = true;
  while (left() >= REQUEST_SIZE) {
    const raw = decodeRaw(stream, at);
    if (raw.magic !== REQUEST_MAGIC) break;
    const start = at;
    at += REQUEST_SIZE;
    if (raw.type === CMD_DISC) break;
    if (raw.type === CMD_WRITE) {
      if (left() < raw.length) break; // cut mid-payload: nothing written, no reply
      at += raw.length;
    }
    sim.requests.push({ raw, at: start, errno: errnoFor(raw) });
  }
  return finish();
}

const changesData = (r: SimRequest) =>
  r.errno === 0 && [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES].includes(r.raw.type);

/**
 * Moves every request that would change data outside the scratch region into it
 * (rewriting its offset), so the rest of the volume must stay byte-identical.
 */
function confine(stream: Uint8Array): Uint8Array {
  const s = stream.slice();
  for (const r of simulate(s).requests) {
    if (!changesData(r)) continue;
    const end = r.raw.offset + BigInt(r.raw.length);
    if (r.raw.offset >= BigInt(SCRATCH) && end <= BigInt(VOLUME)) continue;
    const room = BigInt(VOLUME - SCRATCH) - BigInt(r.raw.length);
    const off = room >= 0n ? BigInt(SCRATCH) + r.raw.offset % (room + 1n) : BigInt(SCRATCH);
    new DataView(s.buffer).setBigUint64(r.at + 16, off);
  }
  for (const r of simulate(s).requests) {
    if (changesData(r)) {
      assert.ok(r.raw.offset >= BigInt(SCRATCH), "confine left a request outside the scratch");
    }
  }
  return s;
}

// --- stream generators

function fill(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = (seed >>> 0) || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

function optionFrame(option: number, data: Uint8Array, lengthDelta = 0): Uint8Array {
  const b = new Uint8Array(16 + data.length);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, IHAVEOPT);
  v.setUint32(8, option);
  v.setUint32(12, Math.max(0, data.length + lengthDelta));
  b.set(data, 16);
  return b;
}

const u32be = (x: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, x >>> 0);
  return b;
};

const goVol0 = optionFrame(OPT_GO, infoData(enc.encode("vol0"), [INFO_BLOCK_SIZE]));
const exportNameVol0 = optionFrame(OPT_EXPORT_NAME, enc.encode("vol0"));

const handshakeArb: fc.Arbitrary<Uint8Array> = fc.oneof(
  // garbage before the handshake
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 48 }) },
  // straight to the point
  { weight: 4, arbitrary: fc.constantFrom(concat(u32be(3), goVol0), concat(u32be(1), exportNameVol0)) },
  // the client flags and options, most often ending in a selection of vol0
  {
    weight: 6,
    arbitrary: fc.tuple(
      fc.oneof({ weight: 6, arbitrary: fc.constantFrom(1, 3) }, fc.integer({ min: 0, max: 0xffffffff })),
      fc.array(
        fc.tuple(
          optionNumberArb,
          optionDataArb,
          fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, fc.integer({ min: -2, max: 2 })),
        ).map(([o, d, delta]) => optionFrame(o === OPT_ABORT ? 99 : o, d, delta)),
        { maxLength: 2 },
      ),
      fc.oneof(
        { weight: 6, arbitrary: fc.constant(goVol0) },
        { weight: 2, arbitrary: fc.constant(exportNameVol0) },
        { weight: 1, arbitrary: fc.constant(new Uint8Array(0)) },
      ),
    ).map(([flags, opts, last]) => concat(u32be(flags), ...opts, last)),
  },
  // a valid handshake, mutated
  { weight: 1, arbitrary: mutatedArb(fc.constant(concat(u32be(3), goVol0)), 3) },
);

/** One piece of the transmission phase: a request (with its payload), or noise. */
const pieceArb = (handle: number): fc.Arbitrary<Uint8Array> => {
  const header = (r: Omit<RawRequest, "magic" | "handle">) =>
    encodeRaw({ ...r, magic: REQUEST_MAGIC, handle: BigInt(handle) });
  const scratchRange = fc.integer({ min: 0, max: 70_000 }).chain((length) =>
    fc.integer({ min: SCRATCH, max: VOLUME - length }).map((offset) => ({ offset, length }))
  );
  return fc.oneof(
    {
      weight: 4,
      arbitrary: fc.tuple(scratchRange, fc.constantFrom(0, 1), fc.nat()).map((
        [{ offset, length }, flags, seed],
      ) => concat(header({ flags, type: CMD_WRITE, offset: BigInt(offset), length }), fill(length, seed))),
    },
    {
      weight: 2,
      arbitrary: fc.tuple(fc.integer({ min: 0, max: VOLUME - 1 }), fc.integer({ min: 0, max: 70_000 })).map((
        [offset, length],
      ) =>
        header({
          flags: 0,
          type: CMD_READ,
          offset: BigInt(offset),
          length: Math.min(length, VOLUME - offset),
        })
      ),
    },
    {
      weight: 2,
      arbitrary: fc.tuple(scratchRange, fc.constantFrom(CMD_TRIM, CMD_WRITE_ZEROES), fc.nat(3)).map((
        [{ offset, length }, type, flags],
      ) => header({ flags, type, offset: BigInt(offset), length })),
    },
    { weight: 1, arbitrary: fc.constant(header({ flags: 0, type: CMD_FLUSH, offset: 0n, length: 0 })) },
    // headers of any kind (most out of range or malformed), writes with a payload of their length if small
    {
      weight: 4,
      arbitrary: fc.tuple(requestArb(VOLUME), fc.nat()).map(([r, seed]) => {
        const h = encodeRaw({ ...r, handle: BigInt(handle) });
        return r.type === CMD_WRITE && r.length <= 70_000 ? concat(h, fill(r.length, seed)) : h;
      }),
    },
    { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 40 }) },
    { weight: 1, arbitrary: fc.constant(header({ flags: 0, type: CMD_DISC, offset: 0n, length: 0 })) },
  ).chain((piece) =>
    fc.oneof(
      { weight: 12, arbitrary: fc.constant(piece) },
      {
        weight: 1,
        arbitrary: fc.array(mutationArb(), { minLength: 1, maxLength: 2 }).map((ms) =>
          applyMutations(piece, ms)
        ),
      },
    )
  );
};

const transmissionArb: fc.Arbitrary<Uint8Array> = fc.integer({ min: 1, max: 16 }).chain((n) =>
  fc.tuple(...Array.from({ length: n }, (_, i) => pieceArb(i + 1))).map((ps) => concat(...ps))
).chain((t) =>
  fc.oneof(
    { weight: 4, arbitrary: fc.constant(t) },
    {
      weight: 1,
      arbitrary: fc.array(mutationArb(), { minLength: 1, maxLength: 3 }).map((ms) => applyMutations(t, ms)),
    },
  )
);

const streamArb = fc.tuple(handshakeArb, transmissionArb).map(([h, t]) => brief(confine(concat(h, t))));

// --- checking what came back

/** Parses simple replies; returns problems found (empty when all is as the simulation says). */
function checkReplies(got: Uint8Array, sim: Simulation): string[] {
  const problems: string[] = [];
  const neg = sim.negotiation;
  if (!bytesEqual(got.subarray(0, neg.length), neg)) {
    let d = 0;
    while (d < neg.length && got[d] === neg[d]) d++;
    return [
      `negotiation bytes differ at ${d} (got ${got.length} bytes, expected a ${neg.length}-byte prefix): ` +
      `got ${hex(got.subarray(Math.max(0, d - 8), d + 24))}, expected ${
        hex(neg.subarray(Math.max(0, d - 8), d + 24))
      }`,
    ];
  }
  if (!sim.transmission) {
    if (got.length !== neg.length) {
      problems.push(`${got.length - neg.length} bytes after a failed negotiation`);
    }
    return problems;
  }
  const byHandle = new Map<bigint, SimRequest[]>();
  for (const r of sim.requests) byHandle.set(r.raw.handle, [...byHandle.get(r.raw.handle) ?? [], r]);
  let at = neg.length;
  let replies = 0;
  while (at < got.length) {
    if (got.length - at < 16) {
      problems.push("truncated simple reply");
      break;
    }
    if (u32(got, at) !== SIMPLE_REPLY_MAGIC) {
      problems.push(`bad simple reply magic at ${at}`);
      break;
    }
    const errno = u32(got, at + 4), handle = u64(got, at + 8);
    at += 16;
    const cands = byHandle.get(handle);
    if (!cands?.length) {
      problems.push(`reply for handle ${handle}, which was not sent or was answered already`);
      break;
    }
    // requests sharing a handle (the client broke the rule that in-flight handles are unique):
    // replies may come in any order, so take the first one with this errno after which the stream
    // goes on with a reply or ends (a READ's reply carries its data, the others do not)
    const next = (c: SimRequest) => at + (c.raw.type === CMD_READ && errno === 0 ? c.raw.length : 0);
    const fits = (c: SimRequest) =>
      c.errno === errno &&
      (next(c) === got.length || (next(c) + 4 <= got.length && u32(got, next(c)) === SIMPLE_REPLY_MAGIC));
    const fitting = cands.findIndex(fits);
    const i = Math.max(0, fitting >= 0 ? fitting : cands.findIndex((c) => c.errno === errno));
    const req = cands.splice(i, 1)[0];
    const zeroLengthOk = req.errno === 0 && errno === EINVAL && req.raw.length === 0 &&
      req.raw.type !== CMD_FLUSH;
    if (req.errno !== errno && !zeroLengthOk) {
      problems.push(`handle ${handle} (type ${req.raw.type}): errno ${errno}, the spec says ${req.errno}`);
    }
    if (req.raw.type === CMD_READ && errno === 0) at += req.raw.length;
    replies++;
  }
  if (at > got.length) problems.push("read data truncated");
  if (replies !== sim.requests.length) {
    problems.push(`${replies} replies for ${sim.requests.length} requests`);
  }
  return problems;
}

// ---------------------------------------------------------------------------
const sock = suite("fuzz nbd: agent socket");
const STATS = { cases: 0, transmission: 0, requests: 0, changing: 0, bytes: 0 };
let pair: Awaited<ReturnType<typeof startPair>>;
const pattern = fill(VOLUME, 20240601);
let agentDied = false, gatewayDied = false;

sock.before(async () => {
  pair = await startPair("fuzznbd", { vol0: VOLUME });
  pair.agent.proc.exited.then(() => agentDied = true);
  pair.gw.proc.exited.then(() => gatewayDied = true);
  const c = await NbdClient.connect(pair.agent.socket);
  await c.go("vol0");
  for (let o = 0; o < VOLUME; o += MiB) await c.write(o, pattern.subarray(o, o + MiB));
  await c.flush();
  await c.disconnect();
});
sock.after(async () => {
  await pair?.stop();
  await dropBulk(pair?.dir);
});

async function sendStream(stream: Uint8Array): Promise<{ bytes: Uint8Array; timedOut: boolean }> {
  const conn = await Deno.connect({ transport: "unix", path: pair.agent.socket });
  const reading = readToEnd(conn, 20_000);
  try {
    await writeAll(conn, stream);
    conn.closeWrite();
  } catch { /* the server closed first (bad input ends a session) */ }
  return await reading;
}

/** The agent is alive and an ordinary client can still write and read (in the scratch region). */
async function stillServes(): Promise<void> {
  assert.ok(await alive(pair.agent.proc), "the agent process is alive");
  assert.ok(await alive(pair.gw.proc), "the gateway process is alive");
  const c = await NbdClient.connect(pair.agent.socket);
  await c.go("vol0");
  assert.is(c.size, VOLUME);
  const probe = fill(4096, Date.now());
  await c.write(VOLUME - 4096, probe);
  assert.equal(await c.read(VOLUME - 4096, 4096), probe);
  await c.flush();
  await c.disconnect();
}

sock("the reference simulation agrees with the server on a plain session (control)", async () => {
  const w = encodeRaw({
    magic: REQUEST_MAGIC,
    flags: 0,
    type: CMD_WRITE,
    handle: 7n,
    offset: BigInt(SCRATCH),
    length: 512,
  });
  const r = encodeRaw({
    magic: REQUEST_MAGIC,
    flags: 0,
    type: CMD_READ,
    handle: 8n,
    offset: 0n,
    length: 512,
  });
  const past = encodeRaw({
    magic: REQUEST_MAGIC,
    flags: 0,
    type: CMD_READ,
    handle: 9n,
    offset: 0n,
    length: 5 * MiB,
  });
  const stream = concat(u32be(3), goVol0, w, fill(512, 1), r, past);
  const sim = simulate(stream);
  assert.ok(sim.transmission);
  assert.equal(sim.requests.map((x) => x.errno), [0, 0, EINVAL]);
  const got = await sendStream(stream);
  assert.not.ok(got.timedOut);
  assert.equal(checkReplies(got.bytes, sim), []);
  // and the checker does notice a wrong expectation
  sim.requests[2].errno = 0;
  assert.ok(checkReplies(got.bytes, sim).length > 0, "the reply checker can fail");
  // a request outside the scratch region is moved into it
  const outside = encodeRaw({
    magic: REQUEST_MAGIC,
    flags: 0,
    type: CMD_TRIM,
    handle: 1n,
    offset: 0n,
    length: 4096,
  });
  const moved = simulate(confine(concat(u32be(3), goVol0, outside))).requests[0].raw;
  assert.ok(moved.offset >= BigInt(SCRATCH));
});

for (let batch = 1; batch <= 3; batch++) {
  sock(
    `random and mutated streams, batch ${batch}: the agent answers per the protocol and lives`,
    async () => {
      await fc.assert(
        fc.asyncProperty(streamArb, async (stream) => {
          const sim = simulate(stream);
          STATS.cases++;
          if (sim.transmission) STATS.transmission++;
          STATS.requests += sim.requests.length;
          STATS.changing += sim.requests.filter(changesData).length;
          STATS.bytes += stream.length;
          const got = await sendStream(stream);
          assert.not.ok(got.timedOut, "the agent ended the session once the client stopped sending");
          assert.not.ok(agentDied, "the agent process died");
          await new Promise((r) => setTimeout(r, 0));
          assert.not.ok(gatewayDied, "the gateway process died");
          const problems = checkReplies(got.bytes, sim);
          assert.equal(problems, [], problems.join("; "));
        }),
        fcParams(Math.ceil(SOCKET_RUNS / 3), { endOnFailure: true }),
      );
      await stillServes();
    },
  );
}

sock(
  "nothing outside the scratch region changed, on the agent's disk and in the gateway's mirror",
  async () => {
    const c = await NbdClient.connect(pair.agent.socket);
    await c.go("vol0");
    const seen = await c.read(0, SCRATCH);
    await c.flush();
    await c.disconnect();
    assert.ok(bytesEqual(seen, pattern.subarray(0, SCRATCH)), "protected region read over NBD is unchanged");
    const disk = await Deno.readFile(pair.paths.vol0);
    assert.ok(bytesEqual(disk.subarray(0, SCRATCH), pattern.subarray(0, SCRATCH)), "unchanged on disk");
    await waitMirrorCaughtUp(pair.gw, "a1", "vol0");
    await waitEqual(pair.gw.mirrorPath("a1", "vol0"), pair.paths.vol0);
    const st = await pair.gw.status();
    assert.ok(st.agents.includes("a1"), "the agent is still connected to its gateway");
    assert.not.ok(agentDied);
    console.log(
      `  socket fuzz: ${STATS.cases} sessions, ${STATS.transmission} reached transmission, ` +
        `${STATS.requests} requests (${STATS.changing} changing data), ${STATS.bytes} bytes sent`,
    );
  },
);

// Found by this fuzzer: kept as a plain regression test, last because it may take the gateway down.
sock(
  "regression: a zero-length TRIM is answered (done or EINVAL) and neither the agent nor the gateway dies",
  async () => {
    const c = await NbdClient.connect(pair.agent.socket);
    await c.go("vol0");
    let code = 0;
    try {
      await c.trim(SCRATCH, 0);
    } catch (e) {
      code = (e as { code?: number }).code ?? -1;
    }
    await c.write(SCRATCH, fill(4096, 3)).catch(() => {});
    await c.flush().catch(() => {});
    c.close();
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(code === 0 || code === EINVAL, `zero-length TRIM answered with error ${code}`);
    assert.ok(await alive(pair.gw.proc), "the gateway process is alive");
    assert.ok(await alive(pair.agent.proc), "the agent process is alive");
    await stillServes();
    await waitMirrorCaughtUp(pair.gw, "a1", "vol0");
  },
);

sock.run();
