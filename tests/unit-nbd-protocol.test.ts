// Unit tests of the agent's NBD protocol code (native/nbd.c, through tests/lib/nbd-protocol.ts). Replies are
// decoded here independently, straight from the NBD protocol document
// (NetworkBlockDevice/nbd doc/proto.md), not with the module's own helpers.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  commandName,
  decodeRequest,
  encodeRequest,
  type ExportInfo,
  Negotiation,
  type OptionOutcome,
  type Request,
  validateRequest,
  writeSimpleReply,
} from "./lib/nbd-protocol.ts";
import { NbdServer } from "../src/nbd/server.ts";

// --- constants from the NBD spec, spelled out independently of the module ---
const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
const OPT_REPLY_MAGIC = 0x3e889045565a9n;
const REQ_MAGIC = 0x25609513;
const SIMPLE_MAGIC = 0x67446698;

const NBD_OPT_EXPORT_NAME = 1, NBD_OPT_ABORT = 2, NBD_OPT_LIST = 3, NBD_OPT_STARTTLS = 5, NBD_OPT_INFO = 6;
const NBD_OPT_GO = 7, NBD_OPT_STRUCTURED_REPLY = 8;
const NBD_REP_ACK = 1, NBD_REP_SERVER = 2, NBD_REP_INFO = 3;
const NBD_REP_FLAG_ERROR = 2 ** 31;
const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1, NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3, NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
const NBD_INFO_EXPORT = 0, NBD_INFO_NAME = 1, NBD_INFO_DESCRIPTION = 2, NBD_INFO_BLOCK_SIZE = 3;

const NBD_FLAG_HAS_FLAGS = 1 << 0, NBD_FLAG_READ_ONLY = 1 << 1, NBD_FLAG_SEND_FLUSH = 1 << 2;
const NBD_FLAG_SEND_FUA = 1 << 3, NBD_FLAG_SEND_TRIM = 1 << 5, NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;

const NBD_CMD_READ = 0, NBD_CMD_WRITE = 1, NBD_CMD_FLUSH = 3, NBD_CMD_TRIM = 4;
const NBD_CMD_CACHE = 5, NBD_CMD_WRITE_ZEROES = 6, NBD_CMD_BLOCK_STATUS = 7;
const NBD_CMD_FLAG_FUA = 1, NBD_CMD_FLAG_NO_HOLE = 2, NBD_CMD_FLAG_DF = 4;
const EPERM = 1, EINVAL = 22, ENOSPC = 28;
const MiB = 1024 * 1024;

const enc = new TextEncoder();

interface OptReply {
  option: number;
  type: number;
  data: Uint8Array;
}

/** Decodes fixed-newstyle option replies: u64 magic, u32 option, u32 type, u32 length, data. */
function decodeReplies(chunks: Uint8Array[]): OptReply[] {
  const out: OptReply[] = [];
  for (const b of chunks) {
    let at = 0;
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    while (at < b.length) {
      assert.ok(b.length - at >= 20, "reply header truncated");
      assert.is(v.getBigUint64(at), OPT_REPLY_MAGIC, "option reply magic");
      const option = v.getUint32(at + 8), type = v.getUint32(at + 12), len = v.getUint32(at + 16);
      assert.ok(at + 20 + len <= b.length, "reply data truncated");
      out.push({ option, type, data: b.slice(at + 20, at + 20 + len) });
      at += 20 + len;
    }
  }
  return out;
}

function u16(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset).getUint16(at);
}
function u32(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset).getUint32(at);
}
function u64(b: Uint8Array, at: number): number {
  return Number(new DataView(b.buffer, b.byteOffset).getBigUint64(at));
}

/** NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, u16 info requests. */
function infoRequest(name: string, infos: number[] = []): Uint8Array {
  const n = enc.encode(name);
  const b = new Uint8Array(4 + n.length + 2 + 2 * infos.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, n.length);
  b.set(n, 4);
  v.setUint16(4 + n.length, infos.length);
  infos.forEach((t, i) => v.setUint16(4 + n.length + 2 + 2 * i, t));
  return b;
}

const disk: ExportInfo = {
  name: "disk",
  description: "the main disk",
  size: 5 * 1024 ** 4 + 512,
  readOnly: false,
};
const ro: ExportInfo = { name: "ro", size: 64 * MiB, readOnly: true };
const uni: ExportInfo = { name: "données-ü", size: 4096, readOnly: false };
const exportsList = [disk, ro, uni];

function negotiation(list = exportsList): Negotiation {
  return new Negotiation((name) => list.find((e) => e.name === name), () => list);
}

function isError(type: number): boolean {
  return type >= NBD_REP_FLAG_ERROR;
}

function expectError(out: OptionOutcome, option: number, type: number): void {
  const r = decodeReplies(out.replies);
  assert.is(r.length, 1, "one error reply");
  assert.is(r[0].option, option);
  assert.is(r[0].type, type, `reply type 0x${r[0].type.toString(16)}`);
  assert.ok(isError(r[0].type));
  assert.is(out.selected, undefined);
  assert.not.ok(out.close, "an error reply keeps the negotiation going");
}

/** Checks the replies of a successful INFO/GO and returns the decoded info payloads by type. */
function infoReplies(out: OptionOutcome, option: number): Map<number, Uint8Array> {
  const r = decodeReplies(out.replies);
  assert.ok(r.length >= 2);
  for (const x of r) assert.is(x.option, option);
  const last = r[r.length - 1];
  assert.is(last.type, NBD_REP_ACK, "ends with NBD_REP_ACK");
  assert.is(last.data.length, 0);
  const infos = new Map<number, Uint8Array>();
  for (const x of r.slice(0, -1)) {
    assert.is(x.type, NBD_REP_INFO);
    const t = u16(x.data, 0);
    assert.not.ok(infos.has(t), `info ${t} sent once`);
    infos.set(t, x.data);
  }
  return infos;
}

function checkExportInfo(data: Uint8Array, e: ExportInfo): number {
  assert.is(data.length, 12, "NBD_INFO_EXPORT is u16 type, u64 size, u16 flags");
  assert.is(u16(data, 0), NBD_INFO_EXPORT);
  assert.is(u64(data, 2), e.size);
  return u16(data, 10);
}

function checkTransmissionFlags(flags: number, readOnly: boolean): void {
  assert.ok(flags & NBD_FLAG_HAS_FLAGS, "HAS_FLAGS");
  assert.ok(flags & NBD_FLAG_SEND_FLUSH, "SEND_FLUSH");
  assert.ok(flags & NBD_FLAG_SEND_FUA, "SEND_FUA");
  if (readOnly) {
    assert.ok(flags & NBD_FLAG_READ_ONLY, "READ_ONLY");
    assert.not.ok(flags & NBD_FLAG_SEND_TRIM, "no TRIM on a read-only export");
    assert.not.ok(flags & NBD_FLAG_SEND_WRITE_ZEROES, "no WRITE_ZEROES on a read-only export");
  } else {
    assert.not.ok(flags & NBD_FLAG_READ_ONLY);
    assert.ok(flags & NBD_FLAG_SEND_TRIM, "SEND_TRIM");
    assert.ok(flags & NBD_FLAG_SEND_WRITE_ZEROES, "SEND_WRITE_ZEROES");
  }
}

// ---------------------------------------------------------------------------
const hs = suite("handshake");

/** The first bytes the agent's NBD server (native/nbd.c) sends on a fresh connection. */
async function liveGreeting(): Promise<Uint8Array> {
  const server = await NbdServer.listen({ tcp: { hostname: "127.0.0.1", port: 0 } });
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.tcpPort! });
    const g = new Uint8Array(18);
    let got = 0;
    while (got < g.length) {
      const n = await conn.read(g.subarray(got));
      if (n === null) break;
      got += n;
    }
    conn.close();
    return g.subarray(0, got);
  } finally {
    await server.close();
  }
}

hs("server greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE | NO_ZEROES", async () => {
  const g = await liveGreeting();
  assert.is(g.length, 18);
  const v = new DataView(g.buffer, g.byteOffset);
  assert.is(v.getBigUint64(0), NBDMAGIC);
  assert.is(v.getBigUint64(8), IHAVEOPT);
  assert.is(v.getUint16(16), 0b11);
});

hs("client flags: fixed newstyle required, NO_ZEROES recorded, unknown bits refused", () => {
  let n = negotiation();
  assert.is(n.clientFlags(1), undefined);
  assert.is(n.noZeroes, false);
  n = negotiation();
  assert.is(n.clientFlags(3), undefined);
  assert.is(n.noZeroes, true);
  for (const bad of [0, 2, 4, 5, 0x80000001, 0xffffffff, 0x4e42]) {
    const msg = negotiation().clientFlags(bad);
    assert.type(msg, "string", `flags 0x${bad.toString(16)} refused`);
  }
});

// ---------------------------------------------------------------------------
const opts = suite("options");

opts("NBD_OPT_LIST: one NBD_REP_SERVER per export (u32 length + name) then ACK", () => {
  const out = negotiation().option(NBD_OPT_LIST, new Uint8Array(0));
  assert.not.ok(out.close);
  assert.is(out.selected, undefined);
  const r = decodeReplies(out.replies);
  assert.is(r.length, exportsList.length + 1);
  const names: string[] = [];
  for (const x of r.slice(0, -1)) {
    assert.is(x.option, NBD_OPT_LIST);
    assert.is(x.type, NBD_REP_SERVER);
    const len = u32(x.data, 0);
    assert.ok(4 + len <= x.data.length);
    names.push(new TextDecoder().decode(x.data.subarray(4, 4 + len)));
  }
  assert.equal(names, exportsList.map((e) => e.name));
  assert.equal(r[r.length - 1], { option: NBD_OPT_LIST, type: NBD_REP_ACK, data: new Uint8Array(0) });
});

opts("NBD_OPT_LIST with no exports is just an ACK; with data it is NBD_REP_ERR_INVALID", () => {
  const r = decodeReplies(negotiation([]).option(NBD_OPT_LIST, new Uint8Array(0)).replies);
  assert.equal(r.map((x) => x.type), [NBD_REP_ACK]);
  expectError(negotiation().option(NBD_OPT_LIST, new Uint8Array([0])), NBD_OPT_LIST, NBD_REP_ERR_INVALID);
});

opts("NBD_OPT_INFO: INFO_EXPORT with size and flags, INFO_BLOCK_SIZE, ACK; nothing selected", () => {
  const out = negotiation().option(NBD_OPT_INFO, infoRequest("disk"));
  assert.is(out.selected, undefined, "INFO does not end the negotiation");
  assert.not.ok(out.close);
  const infos = infoReplies(out, NBD_OPT_INFO);
  checkTransmissionFlags(checkExportInfo(infos.get(NBD_INFO_EXPORT)!, disk), false);
  const bs = infos.get(NBD_INFO_BLOCK_SIZE)!;
  assert.ok(bs, "block size sent");
  assert.is(bs.length, 14, "u16 type, u32 minimum, u32 preferred, u32 maximum");
  const [min, pref, max] = [u32(bs, 2), u32(bs, 6), u32(bs, 10)];
  assert.is(min, 1);
  assert.is(pref, 4096);
  assert.is(max, 32 * MiB);
  // the spec's constraints on the three sizes
  for (const x of [min, pref]) assert.ok(x > 0 && (x & (x - 1)) === 0, "power of two");
  assert.ok(min <= pref && pref <= max);
  assert.ok(max % min === 0);
});

opts("NBD_OPT_GO: the same information, then the export is selected", () => {
  const out = negotiation().option(NBD_OPT_GO, infoRequest("ro", [NBD_INFO_BLOCK_SIZE]));
  assert.equal(out.selected, ro);
  assert.not.ok(out.close);
  const infos = infoReplies(out, NBD_OPT_GO);
  checkTransmissionFlags(checkExportInfo(infos.get(NBD_INFO_EXPORT)!, ro), true);
  assert.ok(infos.has(NBD_INFO_BLOCK_SIZE));
});

opts("requested NBD_INFO_NAME and NBD_INFO_DESCRIPTION are answered", () => {
  const infos = infoReplies(
    negotiation().option(NBD_OPT_INFO, infoRequest("disk", [NBD_INFO_NAME, NBD_INFO_DESCRIPTION])),
    NBD_OPT_INFO,
  );
  const name = infos.get(NBD_INFO_NAME)!;
  assert.is(new TextDecoder().decode(name.subarray(2)), "disk");
  const desc = infos.get(NBD_INFO_DESCRIPTION)!;
  assert.is(new TextDecoder().decode(desc.subarray(2)), "the main disk");
  // an export without a description sends none; unknown info types are ignored
  const infos2 = infoReplies(
    negotiation().option(NBD_OPT_GO, infoRequest("ro", [NBD_INFO_DESCRIPTION, 999])),
    NBD_OPT_GO,
  );
  assert.not.ok(infos2.has(NBD_INFO_DESCRIPTION));
  assert.not.ok(infos2.has(999));
});

opts("UTF-8 export names are matched and listed byte-exactly", () => {
  const out = negotiation().option(NBD_OPT_GO, infoRequest("données-ü"));
  assert.equal(out.selected, uni);
  const list = decodeReplies(negotiation().option(NBD_OPT_LIST, new Uint8Array(0)).replies);
  const entry = list[2].data;
  assert.is(u32(entry, 0), enc.encode("données-ü").length);
});

opts("option data inside a larger buffer (non-zero byteOffset) is parsed correctly", () => {
  const req = infoRequest("disk", [NBD_INFO_NAME]);
  const big = new Uint8Array(req.length + 10).fill(0xaa);
  big.set(req, 7);
  const out = negotiation().option(NBD_OPT_GO, big.subarray(7, 7 + req.length));
  assert.equal(out.selected, disk);
});

opts("INFO / GO for an unknown export: NBD_REP_ERR_UNKNOWN, negotiation continues", () => {
  const n = negotiation();
  expectError(n.option(NBD_OPT_GO, infoRequest("nope")), NBD_OPT_GO, NBD_REP_ERR_UNKNOWN);
  expectError(
    n.option(NBD_OPT_INFO, infoRequest("nope", [NBD_INFO_NAME])),
    NBD_OPT_INFO,
    NBD_REP_ERR_UNKNOWN,
  );
  // the same negotiation still works afterwards
  assert.equal(n.option(NBD_OPT_GO, infoRequest("disk")).selected, disk);
});

opts("malformed INFO / GO data: NBD_REP_ERR_INVALID", () => {
  const good = infoRequest("disk", [NBD_INFO_NAME]);
  const cases: Uint8Array[] = [
    new Uint8Array(0),
    new Uint8Array(5),
    good.subarray(0, good.length - 1), // count says one request, half of it missing
    new Uint8Array([...good, 0]), // trailing byte
    new Uint8Array([...good, 0, 1]), // one request more than counted
    (() => { // name length beyond the data
      const b = good.slice();
      new DataView(b.buffer).setUint32(0, 0xffffffff);
      return b;
    })(),
    (() => { // name length one byte too long
      const b = good.slice();
      new DataView(b.buffer).setUint32(0, 5);
      return b;
    })(),
    (() => { // count far larger than the data
      const b = infoRequest("disk");
      new DataView(b.buffer).setUint16(8, 0xffff);
      return b;
    })(),
  ];
  for (const option of [NBD_OPT_INFO, NBD_OPT_GO]) {
    cases.forEach((c, i) => {
      const out = negotiation().option(option, c);
      try {
        expectError(out, option, NBD_REP_ERR_INVALID);
      } catch (e) {
        throw new Error(`case ${i} of option ${option}: ${(e as Error).message}`);
      }
    });
    // a name that is not UTF-8
    const bad = new Uint8Array([0, 0, 0, 2, 0xc3, 0x28, 0, 0]);
    expectError(negotiation().option(option, bad), option, NBD_REP_ERR_INVALID);
  }
});

opts("error replies carry a readable message as their data", () => {
  const r = decodeReplies(negotiation().option(NBD_OPT_GO, infoRequest("nope")).replies)[0];
  assert.ok(r.data.length > 0);
  assert.ok(new TextDecoder().decode(r.data).includes("nope"));
});

opts("unknown options: NBD_REP_ERR_UNSUP; STARTTLS: NBD_REP_ERR_POLICY", () => {
  for (const o of [0, 4, NBD_OPT_STRUCTURED_REPLY, 9, 10, 1000, 0x7fffffff]) {
    expectError(negotiation().option(o, new Uint8Array(0)), o, NBD_REP_ERR_UNSUP);
  }
  expectError(
    negotiation().option(NBD_OPT_STARTTLS, new Uint8Array(0)),
    NBD_OPT_STARTTLS,
    NBD_REP_ERR_POLICY,
  );
});

opts("NBD_OPT_ABORT: an ACK, then close", () => {
  const out = negotiation().option(NBD_OPT_ABORT, new Uint8Array(0));
  assert.ok(out.close);
  assert.is(out.selected, undefined);
  assert.equal(decodeReplies(out.replies), [{
    option: NBD_OPT_ABORT,
    type: NBD_REP_ACK,
    data: new Uint8Array(0),
  }]);
});

opts("NBD_OPT_EXPORT_NAME: u64 size, u16 flags, 124 zero bytes unless NO_ZEROES", () => {
  const n = negotiation();
  n.clientFlags(1);
  const out = n.option(NBD_OPT_EXPORT_NAME, enc.encode("disk"));
  assert.equal(out.selected, disk);
  assert.not.ok(out.close);
  assert.is(out.replies.length, 1);
  const b = out.replies[0];
  assert.is(b.length, 8 + 2 + 124);
  assert.is(u64(b, 0), disk.size);
  checkTransmissionFlags(u16(b, 8), false);
  assert.ok(b.subarray(10).every((x) => x === 0));

  const z = negotiation();
  z.clientFlags(3);
  const out2 = z.option(NBD_OPT_EXPORT_NAME, enc.encode("ro"));
  assert.equal(out2.selected, ro);
  assert.is(out2.replies[0].length, 10);
  assert.is(u64(out2.replies[0], 0), ro.size);
  checkTransmissionFlags(u16(out2.replies[0], 8), true);
});

opts("NBD_OPT_EXPORT_NAME of an unknown export (or bad UTF-8) closes without a reply", () => {
  for (const data of [enc.encode("nope"), new Uint8Array([0xff, 0xfe])]) {
    const out = negotiation().option(NBD_OPT_EXPORT_NAME, data);
    assert.ok(out.close);
    assert.is(out.selected, undefined);
    assert.is(out.replies.length, 0);
  }
});

// ---------------------------------------------------------------------------
const req = suite("requests");

function rawRequest(
  r: { flags: number; type: number; handle: bigint; offset: bigint; length: number },
): Uint8Array {
  const b = new Uint8Array(28);
  const v = new DataView(b.buffer);
  v.setUint32(0, REQ_MAGIC);
  v.setUint16(4, r.flags);
  v.setUint16(6, r.type);
  v.setBigUint64(8, r.handle);
  v.setBigUint64(16, r.offset);
  v.setUint32(24, r.length);
  return b;
}

req("encodeRequest writes the spec's 28-byte layout", () => {
  const r: Request = {
    flags: NBD_CMD_FLAG_FUA,
    type: NBD_CMD_WRITE,
    handle: 0x0123456789abcdefn,
    offset: 2 ** 40 + 4096,
    length: 65536,
  };
  assert.equal(
    encodeRequest(r),
    rawRequest({ flags: 1, type: 1, handle: 0x0123456789abcdefn, offset: 2n ** 40n + 4096n, length: 65536 }),
  );
});

req("decodeRequest / encodeRequest round trip, also at an offset inside a buffer", () => {
  const rs: Request[] = [
    { flags: 0, type: NBD_CMD_READ, handle: 0n, offset: 0, length: 0 },
    {
      flags: 3,
      type: NBD_CMD_WRITE_ZEROES,
      handle: 0xffffffffffffffffn,
      offset: 2 ** 52,
      length: 0xffffffff,
    },
    { flags: 0, type: NBD_CMD_FLUSH, handle: 77n, offset: 0, length: 0 },
  ];
  for (const r of rs) assert.equal(decodeRequest(encodeRequest(r)), r);
  const big = new Uint8Array(3 + 28 * 2);
  big.set(encodeRequest(rs[0]), 3);
  big.set(encodeRequest(rs[1]), 31);
  assert.equal(decodeRequest(big, 3), rs[0]);
  assert.equal(decodeRequest(big, 31), rs[1]);
  assert.equal(decodeRequest(big.subarray(31)), rs[1]);
});

req("decodeRequest returns undefined on bad magic", () => {
  const b = encodeRequest({ flags: 0, type: 0, handle: 1n, offset: 0, length: 512 });
  for (let i = 0; i < 4; i++) {
    const c = b.slice();
    c[i] ^= 0x10;
    assert.is(decodeRequest(c), undefined);
  }
  assert.is(decodeRequest(new Uint8Array(28)), undefined);
  assert.is(decodeRequest(new Uint8Array(28).fill(0xff)), undefined);
  // a simple reply (server → client magic) is not a request
  const reply = new Uint8Array(28);
  writeSimpleReply(reply, 0, 0, 1n);
  assert.is(decodeRequest(reply), undefined);
});

req("an offset past 2^53 stays out of range instead of wrapping", () => {
  const b = rawRequest({
    flags: 0,
    type: NBD_CMD_READ,
    handle: 1n,
    offset: 0xfffffffffffffe00n,
    length: 512,
  });
  const r = decodeRequest(b)!;
  assert.ok(r.offset >= Number.MAX_SAFE_INTEGER);
  assert.is(validateRequest(r, 1024 ** 4, false), EINVAL);
  const w = decodeRequest(
    rawRequest({ flags: 0, type: NBD_CMD_WRITE, handle: 1n, offset: 2n ** 63n, length: 1 }),
  )!;
  assert.not.equal(validateRequest(w, 1024 ** 4, false), 0);
});

req("simple reply header: magic, error, handle", () => {
  const b = new Uint8Array(20).fill(0x55);
  writeSimpleReply(b, 2, ENOSPC, 0xfedcba9876543210n);
  const v = new DataView(b.buffer);
  assert.is(v.getUint32(2), SIMPLE_MAGIC);
  assert.is(v.getUint32(6), ENOSPC);
  assert.is(v.getBigUint64(10), 0xfedcba9876543210n);
  assert.is(b[0], 0x55);
  assert.is(b[1], 0x55);
  assert.is(b[18], 0x55);
});

req("command names", () => {
  assert.is(commandName(NBD_CMD_READ), "READ");
  assert.is(commandName(NBD_CMD_WRITE_ZEROES), "WRITE_ZEROES");
  assert.is(commandName(99), "unknown(99)");
});

// ---------------------------------------------------------------------------
const val = suite("validateRequest");

const SIZE = 64 * MiB;
const r = (type: number, offset: number, length: number, flags = 0): Request => ({
  flags,
  type,
  handle: 1n,
  offset,
  length,
});

val("in-range requests of every supported command are accepted", () => {
  assert.is(validateRequest(r(NBD_CMD_READ, 0, 4096), SIZE, false), 0);
  assert.is(validateRequest(r(NBD_CMD_READ, SIZE - 4096, 4096), SIZE, false), 0, "up to the last byte");
  assert.is(validateRequest(r(NBD_CMD_WRITE, SIZE - 1, 1, NBD_CMD_FLAG_FUA), SIZE, false), 0);
  assert.is(validateRequest(r(NBD_CMD_TRIM, 0, SIZE), SIZE, false), 0);
  assert.is(
    validateRequest(r(NBD_CMD_WRITE_ZEROES, 4096, SIZE - 4096, NBD_CMD_FLAG_NO_HOLE), SIZE, false),
    0,
  );
  assert.is(validateRequest(r(NBD_CMD_FLUSH, 0, 0), SIZE, false), 0);
  assert.is(validateRequest(r(NBD_CMD_READ, 0, 32 * MiB), SIZE, false), 0, "the advertised maximum");
  assert.is(validateRequest(r(NBD_CMD_WRITE, 0, 32 * MiB), SIZE, false), 0);
});

val("past the end: EINVAL for reads and trims, ENOSPC for writes and write-zeroes", () => {
  assert.is(validateRequest(r(NBD_CMD_READ, SIZE - 4095, 4096), SIZE, false), EINVAL);
  assert.is(validateRequest(r(NBD_CMD_READ, SIZE, 1), SIZE, false), EINVAL);
  assert.is(validateRequest(r(NBD_CMD_WRITE, SIZE - 4095, 4096), SIZE, false), ENOSPC);
  assert.is(validateRequest(r(NBD_CMD_WRITE, SIZE, 1), SIZE, false), ENOSPC);
  assert.is(validateRequest(r(NBD_CMD_WRITE_ZEROES, SIZE - 1, 2), SIZE, false), ENOSPC);
  assert.is(validateRequest(r(NBD_CMD_TRIM, SIZE - 1, 2), SIZE, false), EINVAL);
});

val("longer than the maximum payload: EINVAL for reads and writes (even inside a large export)", () => {
  const big = 1024 ** 4;
  assert.is(validateRequest(r(NBD_CMD_READ, 0, 32 * MiB + 1), big, false), EINVAL);
  assert.is(validateRequest(r(NBD_CMD_WRITE, 0, 32 * MiB + 1), big, false), EINVAL);
  assert.is(validateRequest(r(NBD_CMD_WRITE, 0, 0xffffffff), big, false), EINVAL);
  // commands without a payload may cover more
  assert.is(validateRequest(r(NBD_CMD_TRIM, 0, 0xffffffff), big, false), 0);
  assert.is(validateRequest(r(NBD_CMD_WRITE_ZEROES, 0, 0xffffffff), big, false), 0);
});

val("unknown commands and unknown flags: EINVAL", () => {
  for (const type of [NBD_CMD_CACHE, NBD_CMD_BLOCK_STATUS, 8, 100, 0xffff]) {
    assert.is(validateRequest(r(type, 0, 512), SIZE, false), EINVAL, `command ${type}`);
  }
  for (const flags of [NBD_CMD_FLAG_DF, 1 << 3, 1 << 4, 1 << 15, 0xffff]) {
    assert.is(
      validateRequest(r(NBD_CMD_READ, 0, 512, flags), SIZE, false),
      EINVAL,
      `flags 0x${flags.toString(16)}`,
    );
    assert.is(validateRequest(r(NBD_CMD_WRITE, 0, 512, flags), SIZE, false), EINVAL);
  }
});

val("read-only export: EPERM for every modifying command, reads and flush allowed", () => {
  assert.is(validateRequest(r(NBD_CMD_READ, 0, 4096), SIZE, true), 0);
  assert.is(validateRequest(r(NBD_CMD_FLUSH, 0, 0), SIZE, true), 0);
  assert.is(validateRequest(r(NBD_CMD_WRITE, 0, 4096), SIZE, true), EPERM);
  assert.is(validateRequest(r(NBD_CMD_WRITE, 0, 4096, NBD_CMD_FLAG_FUA), SIZE, true), EPERM);
  assert.is(validateRequest(r(NBD_CMD_TRIM, 0, 4096), SIZE, true), EPERM);
  assert.is(validateRequest(r(NBD_CMD_WRITE_ZEROES, 0, 4096), SIZE, true), EPERM);
});

val("FLUSH must have zero offset and length", () => {
  assert.is(validateRequest(r(NBD_CMD_FLUSH, 4096, 0), SIZE, false), EINVAL);
  assert.is(validateRequest(r(NBD_CMD_FLUSH, 0, 4096), SIZE, false), EINVAL);
  assert.is(validateRequest(r(NBD_CMD_FLUSH, 1, 1), SIZE, false), EINVAL);
});

hs.run();
opts.run();
req.run();
val.run();
