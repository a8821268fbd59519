// Unit tests of the link framing (src/wire/frames.ts), of reading secret files
// (src/wire/secret-file.ts) and of requests matched by id (src/wire/requests.ts). The link's authentication and sealing run in native/seal.c:
// security-replay.test.ts and capture-bad-input.test.ts test them against live roles.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ConnReader, type Readable } from "../src/io/conn-reader.ts";
import { PendingRequests } from "../src/wire/requests.ts";
import {
  decodeHashes,
  decodeJson,
  decodeSeqFrame,
  decodeTime,
  FRAME_HEADER,
  FrameError,
  FrameType,
  hashesFrame,
  jsonFrame,
  MAX_CONTROL_FRAME,
  MAX_FRAME,
  MAX_HASHES_FRAME,
  readFrame,
  seqFrame,
  timeFrame,
  writeFrameHeader,
} from "../src/wire/frames.ts";
import { readSecretFile } from "../src/wire/secret-file.ts";

/** A stream handing out at most `chunk` bytes a read; counts what it served. */
class FakeReader implements Readable {
  served = 0;
  constructor(private readonly data: Uint8Array, private readonly chunk = 1) {}
  async read(p: Uint8Array): Promise<number | null> {
    await Promise.resolve();
    if (this.served >= this.data.length) return null;
    const n = Math.min(p.length, this.chunk, this.data.length - this.served);
    p.set(this.data.subarray(this.served, this.served + n));
    this.served += n;
    return n;
  }
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A frame header (u32 length of type + body, u8 type) built from the wire format description. */
function rawHeader(len: number, type: number): Uint8Array {
  const b = new Uint8Array(5);
  new DataView(b.buffer).setUint32(0, len);
  b[4] = type;
  return b;
}

function filled(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

async function frameError(p: Promise<unknown>, pattern?: RegExp): Promise<FrameError> {
  try {
    await p;
  } catch (e) {
    assert.instance(e, FrameError, String(e));
    if (pattern) assert.match((e as Error).message, pattern);
    return e as FrameError;
  }
  assert.unreachable("expected a FrameError");
  throw new Error("unreachable");
}

const enc = new TextEncoder();

// ---------------------------------------------------------------------------
const frames = suite("frames");

frames("a JSON frame has the documented layout and round-trips", async () => {
  const value = { agent: "app-1", nonce: "AAAA", list: [1, 2, 3], nested: { ü: "✓" } };
  const f = jsonFrame(FrameType.Hello, value);
  const body = enc.encode(JSON.stringify(value));
  assert.equal(f, concat(rawHeader(1 + body.length, FrameType.Hello), body));
  for (const chunk of [1, 2, 3, 1000]) {
    const got = await readFrame(new ConnReader(new FakeReader(f, chunk)));
    assert.ok(got);
    assert.is(got!.type, FrameType.Hello);
    assert.equal(decodeJson(got!.body), value);
  }
});

frames("several frames back to back, then a clean end of stream gives undefined", async () => {
  const record = filled(72 + 4096, 3);
  const recFrame = new Uint8Array(FRAME_HEADER + record.length);
  recFrame.set(record, FRAME_HEADER);
  writeFrameHeader(recFrame, 0, FrameType.Record, record.length);
  const stream = concat(
    jsonFrame(FrameType.Open, { id: 1, name: "disk", size: 1 << 20 }),
    recFrame,
    seqFrame(FrameType.Accepted, 1, 99),
    seqFrame(FrameType.Durable, 0xffffffff, 2 ** 40 + 5),
    jsonFrame(FrameType.Control, null),
  );
  for (const chunk of [1, 7, 4096, 1 << 20]) {
    const r = new ConnReader(new FakeReader(stream, chunk), 1024);
    const a = await readFrame(r);
    assert.is(a!.type, FrameType.Open);
    assert.equal(decodeJson(a!.body), { id: 1, name: "disk", size: 1 << 20 });
    const b = await readFrame(r);
    assert.is(b!.type, FrameType.Record);
    assert.equal(b!.body, record);
    const c = await readFrame(r);
    assert.is(c!.type, FrameType.Accepted);
    assert.equal(decodeSeqFrame(c!.body), { volume: 1, seq: 99 });
    const d = await readFrame(r);
    assert.is(d!.type, FrameType.Durable);
    assert.equal(decodeSeqFrame(d!.body), { volume: 0xffffffff, seq: 2 ** 40 + 5 });
    const e = await readFrame(r);
    assert.is(e!.type, FrameType.Control);
    assert.is(decodeJson(e!.body), null);
    assert.is(await readFrame(r), undefined);
  }
});

frames("writeFrameHeader writes at an offset without touching the body", () => {
  const b = new Uint8Array(3 + FRAME_HEADER + 10).fill(0xcc);
  writeFrameHeader(b, 3, FrameType.Record, 10);
  assert.equal(b.subarray(3, 8), rawHeader(11, FrameType.Record));
  assert.ok(b.subarray(0, 3).every((x) => x === 0xcc));
  assert.ok(b.subarray(8).every((x) => x === 0xcc));
});

frames("a frame body does not alias the reader's buffer", async () => {
  const stream = concat(jsonFrame(FrameType.Control, { a: 1 }), jsonFrame(FrameType.Control, { b: 2 }));
  const r = new ConnReader(new FakeReader(stream, 1000), 64);
  const first = await readFrame(r);
  const copy = first!.body.slice();
  await readFrame(r);
  assert.equal(first!.body, copy);
});

frames("an oversized control frame is refused before its body is read", async () => {
  const hdr = rawHeader(MAX_CONTROL_FRAME + 1, FrameType.Control);
  const fake = new FakeReader(concat(hdr, new Uint8Array(1000)), 1);
  await frameError(readFrame(new ConnReader(fake)), /exceeds/);
  assert.is(fake.served, FRAME_HEADER, "only the header was read");
  // a huge declared length on any non-record type
  for (const type of [FrameType.Hello, FrameType.Open, FrameType.Accepted, 200]) {
    const f = new FakeReader(rawHeader(0xffffffff, type), 1);
    await frameError(readFrame(new ConnReader(f)), /exceeds/);
    assert.is(f.served, FRAME_HEADER);
  }
});

frames("record frames may be large up to maxFrame; one byte more is refused before buffering", async () => {
  assert.is(MAX_FRAME, 1 + 72 + 32 * 1024 * 1024);
  const small = 1 + 72 + 100;
  const body = filled(small - 1, 9);
  const ok = await readFrame(
    new ConnReader(new FakeReader(concat(rawHeader(small, FrameType.Record), body), 50)),
    small,
  );
  assert.equal(ok!.body, body);
  const fake = new FakeReader(concat(rawHeader(small + 1, FrameType.Record), body, new Uint8Array(1)), 1);
  await frameError(readFrame(new ConnReader(fake), small), /exceeds/);
  assert.is(fake.served, FRAME_HEADER);
  const fake2 = new FakeReader(rawHeader(MAX_FRAME + 1, FrameType.Record), 1);
  await frameError(readFrame(new ConnReader(fake2)), /exceeds/);
  assert.is(fake2.served, FRAME_HEADER);
});

frames("a record frame larger than a control frame may be is accepted", async () => {
  const n = MAX_CONTROL_FRAME + 1000;
  const body = filled(n - 1, 1);
  const got = await readFrame(
    new ConnReader(new FakeReader(concat(rawHeader(n, FrameType.Record), body), 1 << 20)),
  );
  assert.is(got!.body.length, n - 1);
  assert.equal(got!.body, body);
});

frames("an empty frame (length 0) is a FrameError", async () => {
  await frameError(readFrame(new ConnReader(new FakeReader(rawHeader(0, FrameType.Control)))), /empty/);
});

frames("a frame of length 1 has an empty body", async () => {
  const got = await readFrame(new ConnReader(new FakeReader(rawHeader(1, FrameType.Welcome))));
  assert.is(got!.type, FrameType.Welcome);
  assert.is(got!.body.length, 0);
});

frames("the stream ending inside a header or a body is a FrameError", async () => {
  const f = jsonFrame(FrameType.Hello, { agent: "a" });
  for (let cut = 1; cut < f.length; cut++) {
    for (const chunk of [1, 3, 100]) {
      const e = await frameError(readFrame(new ConnReader(new FakeReader(f.subarray(0, cut), chunk))));
      assert.match(e.message, cut < FRAME_HEADER ? /header/ : /inside a frame/);
    }
  }
  // a good frame followed by a cut one: the first is returned, then the error
  const r = new ConnReader(new FakeReader(concat(f, f.subarray(0, 7)), 4));
  assert.ok(await readFrame(r));
  await frameError(readFrame(r));
});

frames("acknowledgement frames: exact layout and size checks", () => {
  const f = seqFrame(FrameType.Accepted, 7, 2 ** 50);
  assert.is(f.length, FRAME_HEADER + 12);
  assert.equal(f.subarray(0, 5), rawHeader(13, FrameType.Accepted));
  const v = new DataView(f.buffer);
  assert.is(v.getUint32(5), 7);
  assert.is(v.getBigUint64(9), 2n ** 50n);
  assert.throws(() => decodeSeqFrame(new Uint8Array(11)), (e: Error) => e instanceof FrameError);
  assert.throws(() => decodeSeqFrame(new Uint8Array(13)), (e: Error) => e instanceof FrameError);
  // a body inside a larger buffer
  const big = new Uint8Array(20);
  big.set(f.subarray(5), 4);
  assert.equal(decodeSeqFrame(big.subarray(4, 16)), { volume: 7, seq: 2 ** 50 });
});

frames("hashes frames round-trip; malformed bodies are FrameErrors", async () => {
  const hashes = filled(16 * 5, 4);
  const f = hashesFrame(3, 1 << 20, 2 ** 40 + 1, hashes);
  assert.equal(f.subarray(0, 5), rawHeader(1 + 16 + hashes.length, FrameType.Hashes));
  const got = await readFrame(new ConnReader(new FakeReader(f, 7)));
  assert.is(got!.type, FrameType.Hashes);
  const d = decodeHashes(got!.body);
  assert.is(d.volume, 3);
  assert.is(d.chunkSize, 1 << 20);
  assert.is(d.seq, 2 ** 40 + 1);
  assert.equal(d.hashes, hashes);
  assert.equal(
    decodeHashes(hashesFrame(1, 4096, 0, new Uint8Array(0)).subarray(5)).hashes,
    new Uint8Array(0),
  );
  for (const n of [0, 15, 17, 16 + 15, 16 + 17]) {
    assert.throws(() => decodeHashes(new Uint8Array(n)), (e: Error) => e instanceof FrameError, `${n} bytes`);
  }
});

frames("hashes frames may exceed the control limit up to their own limit", async () => {
  const n = MAX_CONTROL_FRAME + 16 * 10 + 17;
  const body = filled(n - 1, 2);
  const got = await readFrame(
    new ConnReader(new FakeReader(concat(rawHeader(n, FrameType.Hashes), body), 1 << 20)),
  );
  assert.is(got!.body.length, n - 1);
  const fake = new FakeReader(rawHeader(MAX_HASHES_FRAME + 1, FrameType.Hashes), 1);
  await frameError(readFrame(new ConnReader(fake)), /exceeds/);
  assert.is(fake.served, FRAME_HEADER);
});

frames("ping / pong frames carry a timestamp", async () => {
  for (const type of [FrameType.Ping, FrameType.Pong] as const) {
    const t = 1_700_000_000_123.5;
    const got = await readFrame(new ConnReader(new FakeReader(timeFrame(type, t), 3)));
    assert.is(got!.type, type);
    assert.is(decodeTime(got!.body), t);
  }
  assert.throws(() => decodeTime(new Uint8Array(7)), (e: Error) => e instanceof FrameError);
  assert.throws(() => decodeTime(new Uint8Array(9)), (e: Error) => e instanceof FrameError);
});

frames("decodeJson of invalid JSON or invalid UTF-8 is a FrameError", () => {
  for (
    const bad of [enc.encode("{"), enc.encode(""), enc.encode("{'a':1}"), new Uint8Array([0x7b, 0xff, 0x7d])]
  ) {
    assert.throws(() => decodeJson(bad), (e: Error) => e instanceof FrameError);
  }
});

// ---------------------------------------------------------------------------
const auth = suite("secret files");

auth("readSecretFile: owner-only file, trailing newline trimmed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-wire-" });
  try {
    const p = `${dir}/secret`;
    Deno.writeFileSync(p, enc.encode("0123456789abcdef-agent\n"));
    Deno.chmodSync(p, 0o600);
    assert.equal(readSecretFile(p), enc.encode("0123456789abcdef-agent"));
    Deno.writeFileSync(p, enc.encode("0123456789abcdef\r\n\n"));
    assert.equal(readSecretFile(p), enc.encode("0123456789abcdef"));
    Deno.chmodSync(p, 0o400);
    assert.equal(readSecretFile(p), enc.encode("0123456789abcdef"));
    // binary secrets are kept as they are (inner newlines too)
    const bin = Uint8Array.from({ length: 40 }, (_, i) => (i * 37) & 0xff);
    bin[39] = 7;
    Deno.chmodSync(p, 0o600);
    Deno.writeFileSync(p, bin);
    assert.equal(readSecretFile(p), bin);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

auth("readSecretFile refuses group- or world-accessible files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-wire-" });
  try {
    const p = `${dir}/secret`;
    Deno.writeFileSync(p, enc.encode("0123456789abcdef0123\n"));
    for (const mode of [0o640, 0o604, 0o660, 0o644, 0o620, 0o602, 0o610, 0o601, 0o777]) {
      Deno.chmodSync(p, mode);
      assert.throws(() => readSecretFile(p), /group or others/, `mode ${mode.toString(8)}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

auth("readSecretFile refuses short secrets (the newline does not count) and missing files", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-wire-" });
  try {
    const p = `${dir}/secret`;
    for (const text of ["", "\n", "short", "0123456789abcde\n", "0123456789abcde\r\n\r\n"]) {
      Deno.writeFileSync(p, enc.encode(text));
      Deno.chmodSync(p, 0o600);
      assert.throws(() => readSecretFile(p), /fewer than 16/, JSON.stringify(text));
    }
    assert.throws(() => readSecretFile(`${dir}/missing`), /cannot read/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const requests = suite("requests matched by id");

async function rejectsWith(p: Promise<unknown>, re: RegExp): Promise<void> {
  const e = await p.then(() => undefined, (e: Error) => e);
  assert.ok(e, "rejected");
  assert.match(e!.message, re);
}

requests("an answer settles its own request, a late or unknown one is refused", async () => {
  const r = new PendingRequests<string>();
  const sent: number[] = [];
  const send = (id: number) => {
    sent.push(id);
    return true;
  };
  const a = r.request(send, 10_000, () => new Error("timeout a"));
  const b = r.request(send, 10_000, () => new Error("timeout b"));
  assert.equal(sent, [1, 2]);
  assert.ok(r.answer(2, "for b"));
  assert.ok(r.answer(1, "for a"));
  assert.equal(await Promise.all([a, b]), ["for a", "for b"]);
  assert.not.ok(r.answer(1, "again"), "an answered request takes no second answer");
  assert.not.ok(r.answer(99, "never asked"));
  assert.is(r.size, 0);
});

requests("no answer in time: the request fails with its own error and is forgotten", async () => {
  const r = new PendingRequests<string>();
  const p = r.request(() => true, 20, () => new Error("no answer from the peer"));
  await rejectsWith(p, /no answer from the peer/);
  assert.is(r.size, 0);
  assert.not.ok(r.answer(1, "too late"));
});

requests("a link that cannot take the request fails it at once; a dropped link fails all", async () => {
  const r = new PendingRequests<string>();
  const unsent = r.request(() => false, 10_000, () => new Error("timeout"), () => new Error("link is down"));
  await rejectsWith(unsent, /link is down/);
  assert.is(r.size, 0, "its timer went with it");
  const x = r.request(() => true, 10_000, () => new Error("timeout"));
  const y = r.request(() => true, 10_000, () => new Error("timeout"));
  r.failAll(new Error("connection lost"));
  await rejectsWith(x, /connection lost/);
  await rejectsWith(y, /connection lost/);
  assert.is(r.size, 0);
});

frames.run();
auth.run();
requests.run();
