// The fuzzers can find bugs: each property the real fuzzers run (tests/lib/fuzz.ts,
// shared with tests/fuzz-nbd.test.ts, tests/fuzz-replication.test.ts and
// tests/fuzz-heartbeat.test.ts) is run here against a deliberately broken copy of its
// parser, with one check taken out, and fast-check must report a counterexample within
// the CI budget. The real parser passes the same property with the same seed (control).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  applyMutations,
  bytesEqual,
  fc,
  heartbeatBitFlipProperty,
  mutationArb,
  readFrameProperty,
  requestBoundsProperty,
} from "./lib/fuzz.ts";
import { validateRequest } from "./lib/nbd-protocol.ts";
import { FRAME_HEADER, FrameError, type FrameType, readFrame } from "../src/wire/frames.ts";
import type { ConnReader } from "../src/io/conn-reader.ts";
import { decodeHeartbeat, openHeartbeat, type ReplayGuard } from "../src/heartbeat/codec.ts";
import {
  decodeHeader,
  encodeRecord,
  HEADER_SIZE,
  Kind,
  payloadIntact,
  RecordError,
  type RecordHeader,
} from "../src/record/record.ts";
import { MAX_PAYLOAD } from "./lib/nbd-protocol.ts";

const SEED = 20261124;
const BUDGET = 3000;

function expectFound<T>(name: string, details: fc.RunDetails<T>): void {
  assert.ok(details.failed, `${name}: fast-check found no counterexample in ${details.numRuns} runs`);
  assert.ok(details.counterexample !== null, `${name}: a counterexample is reported`);
  console.log(
    `  ${name}: counterexample after ${details.numRuns} run(s), shrunk ${details.numShrinks} time(s): ` +
      fc.stringify(details.counterexample).slice(0, 160),
  );
}

function expectPasses<T>(name: string, details: fc.RunDetails<T>): void {
  assert.not.ok(
    details.failed,
    `${name}: the real parser failed: ${fc.stringify(details.counterexample)} ${
      String(details.errorInstance)
    }`,
  );
}

const planted = suite("fuzz planted bugs");

planted("NBD request validation without its bounds check: a request past the end is found", () => {
  // the planted bug: the export's size is not looked at (as if `offset + length > size` were missing)
  const broken: typeof validateRequest = (r, _size, readOnly) =>
    validateRequest(r, Number.MAX_SAFE_INTEGER * 2, readOnly);
  expectFound(
    "validateRequest without bounds",
    fc.check(requestBoundsProperty(broken), { numRuns: BUDGET, seed: SEED }),
  );
  expectPasses(
    "validateRequest",
    fc.check(requestBoundsProperty(validateRequest), { numRuns: BUDGET, seed: SEED }),
  );
});

planted("frame reader without its size limit: an oversized frame is found", async () => {
  // a copy of readFrame with the `len > limit` check taken out
  const broken: typeof readFrame = async (r: ConnReader, _maxFrame?: number) => {
    if (!await r.fill(FRAME_HEADER)) {
      if (r.buffered > 0) throw new FrameError("stream ended inside a frame header");
      return undefined;
    }
    const h = r.take(FRAME_HEADER);
    const len = new DataView(h.buffer, h.byteOffset, 4).getUint32(0);
    if (len < 1) throw new FrameError("empty frame");
    if (len > 1 << 16) throw new FrameError("huge"); // keeps memory bounded: the planted bug is below this
    const body = await r.readExact(len - 1);
    if (!body) throw new FrameError("stream ended inside a frame");
    return { type: h[4] as FrameType, body };
  };
  expectFound(
    "readFrame without a size limit",
    await fc.check(readFrameProperty(broken), { numRuns: BUDGET, seed: SEED }),
  );
  expectPasses("readFrame", await fc.check(readFrameProperty(readFrame), { numRuns: BUDGET, seed: SEED }));
});

planted("heartbeat opener without its MAC check: an altered datagram that is accepted is found", () => {
  // a copy of openHeartbeat that skips verifyHeartbeat
  const broken: typeof openHeartbeat = (d, secrets, guard: ReplayGuard, now) => {
    const decoded = decodeHeartbeat(d);
    if (!decoded.ok) return decoded;
    const hb = decoded.heartbeat;
    if (!secrets.get(hb.agentId)) return { ok: false, reason: "unknown-agent", agentId: hb.agentId };
    const v = guard.admit(hb, now);
    return v === "accept" || v === "new-boot"
      ? { ok: true, heartbeat: hb, newBoot: v === "new-boot" }
      : { ok: false, reason: v, agentId: hb.agentId };
  };
  expectFound(
    "openHeartbeat without MAC",
    fc.check(heartbeatBitFlipProperty(broken), { numRuns: BUDGET, seed: SEED }),
  );
  expectPasses(
    "openHeartbeat",
    fc.check(heartbeatBitFlipProperty(openHeartbeat), { numRuns: BUDGET, seed: SEED }),
  );
});

planted("record check without the payload checksum: a corrupted record that passes is found", () => {
  // the property of tests/fuzz-replication.test.ts, over a record check given as a parameter
  const property = (intact: (b: Uint8Array, h: RecordHeader) => boolean) =>
    fc.property(
      fc.integer({ min: 1, max: 600 }),
      fc.nat(),
      fc.array(mutationArb(8), { minLength: 1, maxLength: 3 }),
      (length, seed, ms) => {
        const payload = new Uint8Array(length).map((_, i) => (i * 31 + seed) & 0xff);
        const orig = encodeRecord(
          { kind: Kind.Write, flags: 0, volume: 1, length, seq: 1, offset: 0, time: 0, pos: 0 },
          payload,
        );
        const bytes = applyMutations(orig, ms);
        let h: RecordHeader;
        try {
          h = decodeHeader(bytes, MAX_PAYLOAD);
        } catch (e) {
          if (e instanceof RecordError) return;
          throw e;
        }
        if (!bytesEqual(bytes, orig) && intact(bytes, h)) throw new Error("a corrupted record passed");
      },
    );
  // the planted bug: only the length is compared
  const broken = (b: Uint8Array, h: RecordHeader) =>
    b.length === HEADER_SIZE + (h.kind === Kind.Write ? h.length : 0);
  expectFound("payloadIntact without checksum", fc.check(property(broken), { numRuns: BUDGET, seed: SEED }));
  expectPasses("payloadIntact", fc.check(property(payloadIntact), { numRuns: BUDGET, seed: SEED }));
});

planted.run();
