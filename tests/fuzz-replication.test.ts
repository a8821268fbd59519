// Fuzzing the record path (fast-check): the frame reader shared by the agent link and
// the site link, the record codec, the frame body decoders, the remote gateway's
// Receiver (in process, with a recording journal), and, end to end, a live local
// gateway fed mutated record frames over an authenticated agent link.
//
// Properties: random and mutated input never crashes (only FrameError / RecordError),
// no record that fails its checksums, reaches past its volume, or arrives out of
// sequence is ever journaled or applied, and the gateway process stays alive with its
// mirror equal to a model built from the records that were valid.
//
// Budget: FUZZ_RUNS (pure properties; the live gateway gets a tenth of it), FUZZ_SEED.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  alive,
  applyMutations,
  brief,
  bytesEqual,
  concat,
  dropBulk,
  fc,
  fcParams,
  fuzzRuns,
  mutationArb,
  readFrameProperty,
  recordFrame,
} from "./lib/fuzz.ts";
import { Gateway, keygen, RemoteGateway, tempDir, waitFor, writeSecret } from "./lib/cluster.ts";
import { connectSecure } from "../src/transport/secure.ts";
import { type Identity, loadIdentity } from "../src/transport/identity.ts";
import { ConnReader } from "../src/io/conn-reader.ts";
import {
  decodeHashes,
  decodeJson,
  decodeMixed,
  decodeSeqFrame,
  decodeTime,
  FrameError,
  FrameType,
  jsonFrame,
  readFrame,
} from "../src/wire/frames.ts";
import { LinkClient } from "./lib/link-client.ts";
import {
  decodeHeader,
  encodeRecord,
  FLAG_FUA,
  FLAG_MAY_TRIM,
  FLAG_SYNC,
  HEADER_SIZE,
  Kind,
  payloadIntact,
  RecordError,
  type RecordHeader,
} from "../src/record/record.ts";
import { MAX_PAYLOAD } from "./lib/nbd-protocol.ts";
import { setLogLevel } from "../src/log.ts";
import { Receiver } from "../src/replication/receiver.ts";
import { deflateRecord, inflateRecord } from "../src/record/deflate.ts";
import type { Journal, VolumeInfo } from "../src/journal/journal.ts";
import { readSecretFile } from "../src/wire/secret-file.ts";

setLogLevel("warn"); // the site sessions below would log each connection
const PURE_RUNS = fuzzRuns(1500);
const LIVE_RUNS = fuzzRuns(150, 1 / 10);
const KiB = 1024;

// ---------------------------------------------------------------------------
// generators of records

interface Rec {
  h: RecordHeader;
  payload?: Uint8Array;
}

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

function seal(r: Rec): Uint8Array {
  return encodeRecord(r.h, r.h.kind === Kind.Write ? r.payload ?? fill(r.h.length, r.h.seq) : undefined);
}

/** A record of any kind with fields biased to the limits, sealed with the right checksums. */
const anyRecordArb: fc.Arbitrary<Rec> = fc.record({
  kind: fc.constantFrom(
    Kind.Write,
    Kind.Trim,
    Kind.Zero,
    Kind.Flush,
    Kind.Wrap,
    Kind.SyncBegin,
    Kind.SyncEnd,
  ),
  flags: fc.oneof(fc.constantFrom(0, FLAG_FUA, FLAG_MAY_TRIM, FLAG_SYNC), fc.nat(255)),
  volume: fc.oneof(fc.constantFrom(0, 1, 2), fc.nat()),
  length: fc.oneof(fc.integer({ min: 0, max: 3000 }), fc.constantFrom(0, 512, 4096)),
  seq: fc.oneof(fc.nat(20), fc.maxSafeNat()),
  offset: fc.oneof(fc.nat(1 << 20), fc.maxSafeNat(), fc.constantFrom(0, 1 << 20, (1 << 20) - 512)),
  time: fc.nat(),
  pos: fc.constant(0),
}).map((h) => ({ h: h as RecordHeader }));

// ---------------------------------------------------------------------------
const pure = suite("fuzz replication: pure parsers");

pure(
  "readFrame: random, mutated and oversized frame streams give the format's frames or a FrameError",
  async () => {
    await fc.assert(readFrameProperty(readFrame), fcParams(PURE_RUNS));
  },
);

pure(
  "decodeHeader + payloadIntact: a mutated record is never taken for a valid one; errors are RecordErrors",
  () => {
    fc.assert(
      fc.property(anyRecordArb, fc.array(mutationArb(24), { minLength: 1, maxLength: 4 }), (r, ms) => {
        const orig = seal(r);
        const bytes = brief(applyMutations(orig, ms) as Uint8Array<ArrayBuffer>);
        let h: RecordHeader;
        try {
          h = decodeHeader(bytes, MAX_PAYLOAD);
        } catch (e) {
          if (!(e instanceof RecordError)) throw new Error(`decodeHeader threw ${String(e)}`);
          return;
        }
        const valid = payloadIntact(bytes, h);
        if (bytesEqual(bytes, orig)) {
          assert.ok(valid, "the unmodified record is valid");
        } else {
          assert.not.ok(valid, "a modified record passed both checksums");
        }
      }),
      fcParams(PURE_RUNS * 2),
    );
  },
);

pure("frame body decoders: arbitrary bodies decode or throw a FrameError, nothing else", () => {
  const decoders = [decodeSeqFrame, decodeHashes, decodeTime, decodeMixed, decodeJson];
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 64 }),
        fc.string({ maxLength: 40 }).map((s) => new TextEncoder().encode(s)),
        fc.json().map((s) => concat(new Uint8Array([0, 0, 0, s.length & 0xff]), new TextEncoder().encode(s))),
      ),
      (body) => {
        for (const d of decoders) {
          try {
            d(body);
          } catch (e) {
            if (!(e instanceof FrameError)) throw new Error(`${d.name} threw ${String(e)}`);
          }
        }
      },
    ),
    fcParams(PURE_RUNS),
  );
});

pure.run();

// ---------------------------------------------------------------------------
// the remote gateway's Receiver, in process, with a journal that records appends

const RX_SIZE = 64 * KiB;

interface Appended {
  volume: number;
  bytes: Uint8Array;
  h: RecordHeader;
}

function fakeJournal(appended: Appended[]): Journal {
  let pos = 0;
  return {
    positions: { tail: 0, durable: 1e15, head: 0, capacity: 1e15 },
    onDurable: () => () => {},
    append(volume: number, bytes: Uint8Array, h: RecordHeader): Promise<void> {
      h.pos = pos;
      pos += bytes.length;
      appended.push({ volume, bytes: bytes.slice(), h: { ...h } });
      return Promise.resolve();
    },
  } as unknown as Journal;
}

/** A stream of records for volume 0 (announced, RX_SIZE bytes) and others, mostly in sequence. */
const receiverStreamArb = fc.array(
  fc.oneof(
    // the next captured write / trim / zero / flush, in bounds
    {
      weight: 6,
      arbitrary: fc.record({
        t: fc.constant("next" as const),
        kind: fc.constantFrom(Kind.Write, Kind.Trim, Kind.Zero, Kind.Flush),
        offset: fc.nat(RX_SIZE),
        length: fc.nat(8 * KiB),
      }),
    },
    // sync traffic: a SyncBegin, a sync chunk, a SyncEnd
    {
      weight: 1,
      arbitrary: fc.record({
        t: fc.constant("sync" as const),
        kind: fc.constantFrom(Kind.SyncBegin, Kind.Write, Kind.SyncEnd),
        offset: fc.nat(RX_SIZE),
        length: fc.nat(4 * KiB),
      }),
    },
    // any sealed record (other volumes, out of bounds, out of sequence, wrap…)
    { weight: 2, arbitrary: anyRecordArb.map((r) => ({ t: "any" as const, r })) },
    // the next record, then mutated
    {
      weight: 2,
      arbitrary: fc.record({
        t: fc.constant("mutated" as const),
        ms: fc.array(mutationArb(24), { minLength: 1, maxLength: 3 }),
        length: fc.nat(2 * KiB),
      }),
    },
    // the next record with bytes after it
    {
      weight: 1,
      arbitrary: fc.record({
        t: fc.constant("trailing" as const),
        extra: fc.uint8Array({ minLength: 1, maxLength: 32 }),
      }),
    },
  ),
  { maxLength: 12 },
);

const rx = suite("fuzz replication: Receiver (remote gateway) in process");

rx(
  "records that fail a check are never journaled; the stream stops at the first with a RecordError",
  async () => {
    await fc.assert(
      fc.asyncProperty(receiverStreamArb, async (items) => {
        const appended: Appended[] = [];
        const volumes = new Map<number, VolumeInfo>();
        const receiver = new Receiver({
          journal: fakeJournal(appended),
          register: (agent, name, size) => {
            const v: VolumeInfo = {
              id: 100 + volumes.size,
              agent,
              name,
              size,
              mirrorPath: "",
              lastSeq: 0,
              durableSeq: 0,
              known: true,
            };
            volumes.set(v.id, v);
            return Promise.resolve(v);
          },
          copyState: () => "consistent",
          setState: () => {},
          replicaPos: () => 1e15,
          standbyPos: () => undefined,
          promoted: () => false,
          send: () => {},
        });
        try {
          await receiver.hello([{ id: 0, agent: "a1", name: "vol0", size: RX_SIZE }]);
          let seq = 0;
          const sent: Uint8Array[] = [];
          for (const it of items) {
            let bytes: Uint8Array;
            const time = 1;
            if (it.t === "next") {
              const length = it.kind === Kind.Flush ? 0 : Math.min(it.length, RX_SIZE - it.offset);
              bytes = seal({
                h: {
                  kind: it.kind,
                  flags: 0,
                  volume: 0,
                  length,
                  seq: ++seq,
                  offset: it.offset,
                  time,
                  pos: 0,
                },
              });
            } else if (it.t === "sync") {
              const length = it.kind === Kind.Write ? Math.min(it.length, RX_SIZE - it.offset) : 0;
              bytes = seal({
                h: {
                  kind: it.kind,
                  flags: it.kind === Kind.Write ? FLAG_SYNC : 0,
                  volume: 0,
                  length,
                  seq,
                  offset: it.offset,
                  time,
                  pos: 0,
                },
              });
            } else if (it.t === "any") {
              bytes = seal(it.r);
            } else if (it.t === "mutated") {
              const r = seal({
                h: {
                  kind: Kind.Write,
                  flags: 0,
                  volume: 0,
                  length: it.length,
                  seq: seq + 1,
                  offset: 0,
                  time,
                  pos: 0,
                },
              });
              bytes = applyMutations(r, it.ms);
              if (bytesEqual(bytes, r)) seq++;
            } else {
              bytes = concat(
                seal({
                  h: {
                    kind: Kind.Trim,
                    flags: 0,
                    volume: 0,
                    length: 4096,
                    seq: seq + 1,
                    offset: 0,
                    time,
                    pos: 0,
                  },
                }),
                it.extra,
              );
            }
            sent.push(bytes);
            try {
              await receiver.record(bytes.slice());
            } catch (e) {
              if (!(e instanceof RecordError)) throw new Error(`Receiver.record threw ${String(e)}`);
              break; // the stream is reset at the first bad record
            }
          }
          // every journaled record is exactly one intact record, of the announced volume, within it
          let last = 0;
          for (const a of appended) {
            const h = decodeHeader(a.bytes, MAX_PAYLOAD);
            assert.ok(payloadIntact(a.bytes, h), "a journaled record fails its checksums");
            assert.is(
              a.bytes.length,
              HEADER_SIZE + (h.kind === Kind.Write ? h.length : 0),
              "exact record length",
            );
            assert.is(a.volume, 100, "journaled into the announced volume");
            assert.ok(h.kind !== Kind.Wrap, "a wrap record was journaled");
            if (h.kind === Kind.Write || h.kind === Kind.Trim || h.kind === Kind.Zero) {
              assert.ok(
                h.offset + h.length <= RX_SIZE,
                `record past the end journaled: ${h.offset}+${h.length}`,
              );
            }
            const between = (h.flags & FLAG_SYNC) !== 0 || h.kind === Kind.SyncBegin ||
              h.kind === Kind.SyncEnd;
            if (!between) {
              assert.ok(h.seq > last, `captured record ${h.seq} journaled after ${last}`);
              last = h.seq;
            }
          }
        } finally {
          receiver.close();
        }
      }),
      fcParams(PURE_RUNS),
    );
  },
);

rx(
  "regression: a record with bytes after it is refused (the journal walks the ring by the header's length)",
  async () => {
    const appended: Appended[] = [];
    const receiver = new Receiver({
      journal: fakeJournal(appended),
      register: (agent, name, size) =>
        Promise.resolve({ id: 1, agent, name, size, mirrorPath: "", lastSeq: 0, durableSeq: 0, known: true }),
      copyState: () => "consistent",
      setState: () => {},
      replicaPos: () => 1e15,
      standbyPos: () => undefined,
      promoted: () => false,
      send: () => {},
    });
    try {
      await receiver.hello([{ id: 0, agent: "a1", name: "vol0", size: RX_SIZE }]);
      const trim = seal({
        h: { kind: Kind.Trim, flags: 0, volume: 0, length: 4096, seq: 1, offset: 0, time: 1, pos: 0 },
      });
      let err: unknown;
      try {
        await receiver.record(concat(trim, new Uint8Array(100).fill(0xab)));
      } catch (e) {
        err = e;
      }
      assert.instance(err, RecordError);
      assert.is(appended.length, 0);
      await receiver.record(trim);
      assert.is(appended.length, 1);
    } finally {
      receiver.close();
    }
  },
);

rx(
  "compressed records: a mutated frame body inflates to the original record or is refused with a RecordError",
  () => {
    let refused = 0;
    fc.assert(
      fc.property(
        fc.integer({ min: 512, max: 64 * KiB }),
        fc.uint8Array({ minLength: 1, maxLength: 64 }),
        fc.array(mutationArb(24), { minLength: 1, maxLength: 3 }),
        (length, pattern, ms) => {
          // a repeated pattern compresses: the sender would send it deflated
          const payload = new Uint8Array(length).map((_, i) => pattern[i % pattern.length]);
          const orig = encodeRecord(
            { kind: Kind.Write, flags: 0, volume: 0, length, seq: 1, offset: 0, time: 1, pos: 0 },
            payload,
          );
          const body = deflateRecord(orig);
          assert.ok(body && body.length < orig.length, "a compressible record is sent deflated");
          assert.equal(
            inflateRecord(body.slice(), MAX_PAYLOAD),
            orig,
            "an intact body inflates to the record",
          );
          const bad = applyMutations(body, ms);
          let out: Uint8Array;
          try {
            out = inflateRecord(bad, MAX_PAYLOAD);
          } catch (e) {
            if (!(e instanceof RecordError)) throw new Error(`inflateRecord threw ${String(e)}`);
            refused++;
            return;
          }
          // what inflates is then checked as any record: only the original passes its checksums
          const h = decodeHeader(out, MAX_PAYLOAD);
          if (payloadIntact(out, h)) assert.equal(out, orig, "a mutated body passed as another record");
        },
      ),
      fcParams(PURE_RUNS),
    );
    assert.ok(refused > 0, "some mutated bodies were refused");
  },
);

rx("compressed records: incompressible or small payloads travel as they are", () => {
  const random = crypto.getRandomValues(new Uint8Array(8 * KiB));
  const h = {
    kind: Kind.Write,
    flags: 0,
    volume: 0,
    length: random.length,
    seq: 1,
    offset: 0,
    time: 1,
    pos: 0,
  };
  assert.is(deflateRecord(encodeRecord(h, random)), undefined);
  assert.is(deflateRecord(encodeRecord({ ...h, length: 100 }, new Uint8Array(100))), undefined);
  assert.is(deflateRecord(encodeRecord({ ...h, kind: Kind.Zero, length: 1 << 20 })), undefined);
  // a body that declares a small or non-write record is refused before inflating anything
  const small = encodeRecord({ ...h, length: 100 }, new Uint8Array(100));
  assert.throws(() => inflateRecord(small, MAX_PAYLOAD), (e: Error) => e instanceof RecordError);
});

rx.run();

// ---------------------------------------------------------------------------
// end to end: a live local gateway, fed mutated record frames by an authenticated client

const VOL = 256 * KiB;
/** Fuzzed valid records only touch [SCRATCH, VOL); everything else stays the base pattern. */
const SCRATCH = 192 * KiB;
const AGENT = "fz";

const live = suite("fuzz replication: live local gateway, agent link");
let dir = "";
let gw: Gateway;
let secret: Uint8Array;
let gwDied = false;
const model = fill(VOL, 99);
let lastSeq = 0;
const LIVE = { cases: 0, accepted: 0, refusedStreams: 0, bytes: 0 };

/** Connects, authenticates as AGENT and opens v0 as link volume 1; returns the link and lastSeq. */
async function session(): Promise<{ link: LinkClient; lastSeq: number }> {
  const link = await LinkClient.connect(gw.socket, AGENT, secret);
  await link.send(jsonFrame(FrameType.Open, { id: 1, name: "v0", size: VOL }));
  while (true) {
    const f = await link.next();
    if (!f) throw new Error("closed before Opened");
    if (f.type !== FrameType.Opened) continue;
    const m = decodeJson<{ lastSeq?: number; error?: string }>(f.body);
    if (m.error) throw new Error(m.error);
    return { link, lastSeq: m.lastSeq ?? 0 };
  }
}

/** What the gateway said when it ended a session (its Error frames). */
function errors(frames: { type: number; body: Uint8Array }[]): string {
  return frames.filter((f) => f.type === FrameType.Error).map((f) => new TextDecoder().decode(f.body)).join(
    " ",
  );
}

async function volumeSeq(): Promise<number> {
  const s = await gw.status();
  return s.volumes.find((v) => v.agent === AGENT && v.name === "v0")?.lastSeq ?? -1;
}

function applyToModel(h: RecordHeader, body: Uint8Array): void {
  if (h.kind === Kind.Write) model.set(body.subarray(HEADER_SIZE, HEADER_SIZE + h.length), h.offset);
  else if (h.kind === Kind.Trim || h.kind === Kind.Zero) model.fill(0, h.offset, h.offset + h.length);
}

live.before(async () => {
  dir = await tempDir("fuzzrepl");
  await writeSecret(`${dir}/fz.secret`);
  secret = readSecretFile(`${dir}/fz.secret`);
  gw = await new Gateway({ dir, agents: { [AGENT]: `${dir}/fz.secret` } }).start();
  gw.proc.exited.then(() => gwDied = true);
  // the base pattern, with valid records
  const s = await session();
  lastSeq = s.lastSeq;
  const frames: Uint8Array[] = [];
  for (let o = 0; o < VOL; o += 64 * KiB) {
    const body = seal({
      h: {
        kind: Kind.Write,
        flags: 0,
        volume: 1,
        length: 64 * KiB,
        seq: ++lastSeq,
        offset: o,
        time: 1,
        pos: 0,
      },
      payload: model.subarray(o, o + 64 * KiB),
    });
    frames.push(recordFrame(body));
  }
  await s.link.send(...frames);
  s.link.conn.closeWrite();
  await s.link.drain(10_000);
  s.link.close();
  assert.is(await volumeSeq(), lastSeq);
});
live.after(async () => {
  await gw?.proc.stop();
  await dropBulk(dir);
});

/** One piece of a session: a valid next record, a sealed hostile one, a mutated one, or one with bytes after it. */
const pieceArb = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      t: fc.constant("valid" as const),
      kind: fc.constantFrom(Kind.Write, Kind.Write, Kind.Trim, Kind.Zero, Kind.Flush),
      offset: fc.integer({ min: SCRATCH, max: VOL }),
      length: fc.nat(16 * KiB),
      fua: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("hostile" as const),
      kind: fc.constantFrom(Kind.Write, Kind.Trim, Kind.Zero, Kind.Wrap, Kind.Flush),
      // past the end, or at the very end, or anywhere in a large space; right or wrong sequence
      offset: fc.oneof(
        fc.integer({ min: VOL - 4096, max: VOL + 4096 }),
        fc.integer({ min: VOL - 4096, max: Number.MAX_SAFE_INTEGER }),
        fc.constantFrom(VOL, 2 ** 53 - 1),
      ),
      length: fc.oneof(fc.nat(8 * KiB), fc.constantFrom(0xffffffff, 2 ** 31)),
      seqDelta: fc.oneof(fc.constant(1), fc.integer({ min: -2, max: 3 })),
      volume: fc.oneof(fc.constant(1), fc.nat(4)),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("mutated" as const),
      length: fc.nat(4 * KiB),
      ms: fc.array(mutationArb(24), { minLength: 1, maxLength: 3 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      t: fc.constant("trailing" as const),
      extra: fc.uint8Array({ minLength: 1, maxLength: 40 }),
    }),
  },
  // a record sent again (a replay inside the session): one of this session's, or the last one held
  { weight: 2, arbitrary: fc.record({ t: fc.constant("replay" as const), back: fc.nat() }) },
);

/** A replayed record: an earlier one of this session, or a write carrying the sequence number already held. */
function replayed(accepted: { body: Uint8Array }[], back: number, volume: number, seq: number): Uint8Array {
  if (accepted.length > 0) return accepted[back % accepted.length].body;
  return seal({
    h: { kind: Kind.Write, flags: 0, volume, length: 512, seq, offset: SCRATCH, time: 1, pos: 0 },
  });
}

const liveCaseArb = fc.tuple(
  fc.array(pieceArb, { minLength: 1, maxLength: 8 }),
  // noise after the records (a frame header, random bytes, or nothing)
  fc.oneof(fc.constant(new Uint8Array(0)), fc.uint8Array({ maxLength: 24 })),
);

live(
  "mutated and hostile record frames: only valid in-sequence records in bounds are journaled; the gateway lives",
  async () => {
    await fc.assert(
      fc.asyncProperty(liveCaseArb, async ([pieces, noise]) => {
        LIVE.cases++;
        const s = await session();
        assert.is(s.lastSeq, lastSeq, "the gateway's sequence is the model's");
        let seq = s.lastSeq;
        let ok = true; // the gateway accepts records until the first bad one
        const accepted: { h: RecordHeader; body: Uint8Array }[] = [];
        const frames: Uint8Array[] = [];
        for (const p of pieces) {
          let body: Uint8Array;
          let valid = false;
          if (p.t === "valid") {
            const length = p.kind === Kind.Flush ? 0 : Math.min(p.length, VOL - p.offset);
            const h: RecordHeader = {
              kind: p.kind,
              flags: p.fua ? FLAG_FUA : 0,
              volume: 1,
              length,
              seq: seq + 1,
              offset: p.kind === Kind.Flush ? 0 : p.offset,
              time: 1,
              pos: 0,
            };
            body = seal({ h });
            valid = true;
          } else if (p.t === "hostile") {
            const h: RecordHeader = {
              kind: p.kind,
              flags: 0,
              volume: p.volume,
              length: p.kind === Kind.Write ? Math.min(p.length, 8 * KiB) : p.length,
              seq: Math.max(0, seq + p.seqDelta),
              offset: p.offset,
              time: 1,
              pos: 0,
            };
            body = seal({ h });
            // what the gateway must make of it, per its rules
            valid = h.volume === 1 && h.kind !== Kind.Wrap && h.seq === seq + 1 &&
              (h.kind === Kind.Flush || h.offset + h.length <= VOL);
            if (valid && h.kind !== Kind.Flush) {
              assert.ok(h.offset >= SCRATCH, "a hostile record that is valid lies in the scratch region");
            }
          } else if (p.t === "mutated") {
            const orig = seal({
              h: {
                kind: Kind.Write,
                flags: 0,
                volume: 1,
                length: p.length,
                seq: seq + 1,
                offset: SCRATCH,
                time: 1,
                pos: 0,
              },
            });
            body = applyMutations(orig, p.ms);
            valid = bytesEqual(body, orig);
          } else if (p.t === "replay") {
            body = replayed(accepted, p.back, 1, seq); // the gateway takes exactly the next number
          } else {
            body = concat(
              seal({
                h: {
                  kind: Kind.Trim,
                  flags: 0,
                  volume: 1,
                  length: 4096,
                  seq: seq + 1,
                  offset: SCRATCH,
                  time: 1,
                  pos: 0,
                },
              }),
              p.extra,
            );
          }
          frames.push(recordFrame(body));
          if (ok && valid) {
            seq++;
            accepted.push({ h: decodeHeader(body, MAX_PAYLOAD), body });
          } else ok = false;
        }
        const stream = concat(...frames, noise);
        LIVE.bytes += stream.length;
        try {
          // one sealed batch: inside it, the frames are the data plane's to judge
          await s.link.send(stream);
          s.link.conn.closeWrite();
        } catch { /* the gateway closed first */ }
        const got = await s.link.drain(10_000);
        s.link.close();
        assert.not.ok(got.timedOut, "the gateway ended the session");
        assert.not.ok(gwDied, "the gateway died");
        const now = await volumeSeq();
        assert.is(
          now,
          s.lastSeq + accepted.length,
          `the gateway accepted ${now - s.lastSeq}, the rules ${accepted.length}`,
        );
        for (const a of accepted) applyToModel(a.h, a.body);
        lastSeq = now;
        LIVE.accepted += accepted.length;
        if (!ok) LIVE.refusedStreams++;
      }),
      fcParams(LIVE_RUNS, { endOnFailure: true }),
    );
  },
);

live(
  "after the fuzzing the gateway is alive and its mirror equals the model (nothing else was applied)",
  async () => {
    assert.ok(await alive(gw.proc), "the gateway process is alive");
    await waitFor(
      async () => {
        const s = await gw.status();
        const v = s.volumes.find((x) => x.agent === AGENT && x.name === "v0");
        return v && v.mirrorSeq === v.lastSeq && v.durableSeq === v.lastSeq;
      },
      30_000,
      "the mirror to catch up",
    );
    const mirror = await Deno.readFile(gw.mirrorPath(AGENT, "v0"));
    const img = new Uint8Array(VOL);
    img.set(mirror.subarray(0, VOL));
    assert.is(mirror.length, VOL, "the mirror did not grow");
    let firstDiff = -1;
    for (let i = 0; i < VOL; i++) {
      if (img[i] !== model[i]) {
        firstDiff = i;
        break;
      }
    }
    assert.is(firstDiff, -1, `the mirror differs from the model at byte ${firstDiff}`);
    console.log(
      `  live link fuzz: ${LIVE.cases} sessions, ${LIVE.accepted} valid records journaled, ` +
        `${LIVE.refusedStreams} sessions ended by a bad record, ${LIVE.bytes} bytes sent`,
    );
  },
);

live("regression: a sealed TRIM record with bytes after it is refused by the live gateway", async () => {
  const s = await session();
  const body = concat(
    seal({
      h: {
        kind: Kind.Trim,
        flags: 0,
        volume: 1,
        length: 4096,
        seq: s.lastSeq + 1,
        offset: SCRATCH,
        time: 1,
        pos: 0,
      },
    }),
    new Uint8Array(64).fill(0xcd),
  );
  await s.link.send(recordFrame(body));
  s.link.conn.closeWrite();
  const got = await s.link.drain(10_000);
  s.link.close();
  assert.match(errors(got.frames), /checksum/, "the gateway says why");
  assert.is(await volumeSeq(), s.lastSeq, "nothing was journaled");
});

live.run();

// ---------------------------------------------------------------------------
// end to end: a live remote gateway, fed mutated record frames over an authenticated site link

const SITE_RUNS = fuzzRuns(60, 1 / 25);
const SITE_VOL_ID = 7;
const siteLive = suite("fuzz replication: live remote gateway, site link");
let siteDir = "";
let remote: RemoteGateway;
let localIdentity: Identity;
let remoteDied = false;
const siteModel = new Uint8Array(VOL);
const SITE = { cases: 0, applied: 0, duplicates: 0, bytes: 0 };

/** A site session as the trusted local site: sends `frames` after the hello, half-closes, reads to the end. */
async function siteCase(
  build: (lastSeq: number) => Uint8Array,
): Promise<{ lastSeq: number; timedOut: boolean }> {
  const auth = await connectSecure({
    hostname: "127.0.0.1",
    port: remote.port,
    identity: localIdentity,
    expectedFingerprint: remote.fingerprint,
    peerName: "s1",
  });
  const reader = new ConnReader(auth.conn);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    auth.conn.close();
  }, 15_000);
  try {
    await auth.conn.write(jsonFrame(FrameType.SiteHello, {
      v: 1,
      site: "local",
      volumes: [{ id: SITE_VOL_ID, agent: "a1", name: "v0", size: VOL }],
    }));
    const w = await readFrame(reader);
    assert.is(w?.type, FrameType.SiteWelcome);
    const welcome = decodeJson<{ volumes: { id: number; lastSeq: number }[] }>(w!.body);
    const lastSeq = welcome.volumes.find((v) => v.id === SITE_VOL_ID)!.lastSeq;
    try {
      await auth.conn.write(build(lastSeq));
      await auth.conn.closeWrite();
    } catch { /* the remote closed first */ }
    try {
      while (await readFrame(reader)) { /* acknowledgements, then an error or the end */ }
    } catch { /* reset */ }
    return { lastSeq, timedOut };
  } finally {
    clearTimeout(timer);
    auth.conn.close();
  }
}

async function replicaSeq(): Promise<{ lastSeq: number; appliedSeq: number }> {
  const r = (await remote.status()).replicas.find((x) => x.agent === "a1" && x.name === "v0");
  return { lastSeq: r?.lastSeq ?? 0, appliedSeq: r?.appliedSeq ?? 0 };
}

siteLive.before(async () => {
  siteDir = await tempDir("fuzzsite");
  const fp = await keygen(`${siteDir}/local-keys`, "local");
  localIdentity = await loadIdentity(`${siteDir}/local-keys`);
  remote = await new RemoteGateway({
    dir: siteDir,
    site: "s1",
    trust: { local: fp },
    standbySecrets: {},
    ackAfter: "rgp",
  }).init();
  await remote.start();
  remote.proc.exited.then(() => remoteDied = true);
});
siteLive.after(async () => {
  await remote?.proc.stop();
  await dropBulk(siteDir);
});

/** Control requests over a site session as the trusted local site (no volumes); their answers in order. */
async function siteRequests(msgs: Record<string, unknown>[]): Promise<Record<string, unknown>[]> {
  const auth = await connectSecure({
    hostname: "127.0.0.1",
    port: remote.port,
    identity: localIdentity,
    expectedFingerprint: remote.fingerprint,
    peerName: "s1",
  });
  const conn = auth.conn;
  const reader = new ConnReader(conn);
  const timer = setTimeout(() => conn.close(), 15_000);
  try {
    await conn.write(jsonFrame(FrameType.SiteHello, { v: 1, site: "local", volumes: [] }));
    assert.is((await readFrame(reader))?.type, FrameType.SiteWelcome);
    const out = [];
    for (const [i, m] of msgs.entries()) {
      await conn.write(jsonFrame(FrameType.Control, { ...m, id: i + 1 }));
      let f = await readFrame(reader);
      while (f && f.type !== FrameType.Control) f = await readFrame(reader);
      out.push(decodeJson<Record<string, unknown>>(f!.body));
    }
    return out;
  } finally {
    clearTimeout(timer);
    auth.conn.close();
  }
}

siteLive(
  "a malformed desired state of standby copies is refused with the reason; the remote lives",
  async () => {
    const [notObject, badList, badPath, fine] = await siteRequests([
      { type: "standbys", agents: ["a1"] },
      { type: "standbys", agents: { a1: "vol0" } },
      { type: "standbys", agents: { a1: [{ name: "vol0", path: "../x", size: 4096 }] } },
      { type: "standbys", agents: { a1: [{ name: "vol0", path: "/dev/sdb", size: 4096 }] } },
    ]);
    // refused by the site link's parser (src/wire/control.ts), answered by the request's id
    const refused = (m: Record<string, unknown>, id: number, field: RegExp) => {
      assert.is(m.type, "refused");
      assert.is(m.id, id);
      assert.match(String(m.error), /^site link \(local to remote gateway\): "standbys" message refused: /);
      assert.match(String(m.error), field);
    };
    refused(notObject, 1, /agents: .*expected record/);
    refused(badList, 2, /agents\.a1: .*expected array/);
    refused(badPath, 3, /agents\.a1\.0\.path: must be an absolute path/);
    assert.is(fine.type, "standbys");
    // a standby agent not connected: its copy is pending, with the reason
    assert.equal(fine.agents, {
      a1: [{ name: "vol0", state: "pending", error: "standby agent a1 is not connected to site s1" }],
    });
    assert.not.ok(remoteDied, "the remote gateway lives");
  },
);

siteLive(
  "mutated and hostile record frames over the site link: only valid records are journaled, duplicates are dropped; the remote lives",
  async () => {
    await fc.assert(
      fc.asyncProperty(liveCaseArb, async ([pieces, noise]) => {
        SITE.cases++;
        const accepted: { h: RecordHeader; body: Uint8Array }[] = [];
        let expectSeq = 0;
        const r = await siteCase((lastSeq) => {
          let seq = lastSeq;
          let ok = true;
          const frames: Uint8Array[] = [];
          for (const p of pieces) {
            let body: Uint8Array;
            // what the remote makes of it: apply, skip (a duplicate) or refuse (the stream ends)
            let verdict: "apply" | "skip" | "refuse" = "refuse";
            if (p.t === "valid") {
              const length = p.kind === Kind.Flush ? 0 : Math.min(p.length, VOL - p.offset);
              body = seal({
                h: {
                  kind: p.kind,
                  flags: p.fua ? FLAG_FUA : 0,
                  volume: SITE_VOL_ID,
                  length,
                  seq: seq + 1,
                  offset: p.kind === Kind.Flush ? 0 : p.offset,
                  time: 1,
                  pos: 0,
                },
              });
              verdict = "apply";
            } else if (p.t === "hostile") {
              const h: RecordHeader = {
                kind: p.kind,
                flags: 0,
                volume: p.volume === 1 ? SITE_VOL_ID : p.volume,
                length: p.kind === Kind.Write ? Math.min(p.length, 8 * KiB) : p.length,
                seq: Math.max(0, seq + p.seqDelta),
                offset: p.offset,
                time: 1,
                pos: 0,
              };
              body = seal({ h });
              const inBounds = h.kind === Kind.Flush || h.offset + h.length <= VOL;
              if (h.volume === SITE_VOL_ID && h.kind !== Kind.Wrap && inBounds) {
                verdict = h.seq <= seq ? "skip" : h.seq === seq + 1 ? "apply" : "refuse";
              }
            } else if (p.t === "mutated") {
              const orig = seal({
                h: {
                  kind: Kind.Write,
                  flags: 0,
                  volume: SITE_VOL_ID,
                  length: p.length,
                  seq: seq + 1,
                  offset: SCRATCH,
                  time: 1,
                  pos: 0,
                },
              });
              body = applyMutations(orig, p.ms);
              if (bytesEqual(body, orig)) verdict = "apply";
            } else if (p.t === "replay") {
              body = replayed(accepted, p.back, SITE_VOL_ID, seq);
              verdict = "skip"; // a number the replica holds already: dropped, never applied again
            } else {
              body = concat(
                seal({
                  h: {
                    kind: Kind.Trim,
                    flags: 0,
                    volume: SITE_VOL_ID,
                    length: 4096,
                    seq: seq + 1,
                    offset: SCRATCH,
                    time: 1,
                    pos: 0,
                  },
                }),
                p.extra,
              );
            }
            frames.push(recordFrame(body));
            if (!ok) continue;
            if (verdict === "refuse") ok = false;
            else if (verdict === "skip") SITE.duplicates++;
            else {
              seq++;
              accepted.push({ h: decodeHeader(body, MAX_PAYLOAD), body });
            }
          }
          expectSeq = seq;
          const stream = concat(...frames, noise);
          SITE.bytes += stream.length;
          return stream;
        });
        assert.not.ok(r.timedOut, "the remote ended the session");
        assert.not.ok(remoteDied, "the remote gateway died");
        const now = (await replicaSeq()).lastSeq;
        assert.is(now, expectSeq, `the remote is at ${now}, the rules say ${expectSeq}`);
        for (const a of accepted) {
          if (a.h.kind === Kind.Write) {
            siteModel.set(a.body.subarray(HEADER_SIZE, HEADER_SIZE + a.h.length), a.h.offset);
          } else if (a.h.kind === Kind.Trim || a.h.kind === Kind.Zero) {
            siteModel.fill(0, a.h.offset, a.h.offset + a.h.length);
          }
        }
        SITE.applied += accepted.length;
      }),
      fcParams(SITE_RUNS, { endOnFailure: true }),
    );
  },
);

siteLive("after the fuzzing the remote is alive and its replica equals the model", async () => {
  assert.ok(await alive(remote.proc), "the remote gateway process is alive");
  await waitFor(
    async () => {
      const r = await replicaSeq();
      return r.appliedSeq === r.lastSeq;
    },
    30_000,
    "the replica to apply everything",
  );
  const img = await Deno.readFile(remote.replicaPath("a1", "v0"));
  assert.is(img.length, VOL, "the replica did not grow");
  let firstDiff = -1;
  for (let i = 0; i < VOL; i++) {
    if (img[i] !== siteModel[i]) {
      firstDiff = i;
      break;
    }
  }
  assert.is(firstDiff, -1, `the replica differs from the model at byte ${firstDiff}`);
  console.log(
    `  live site fuzz: ${SITE.cases} site sessions, ${SITE.applied} records applied, ` +
      `${SITE.duplicates} duplicates dropped, ${SITE.bytes} bytes sent`,
  );
});

siteLive.run();
