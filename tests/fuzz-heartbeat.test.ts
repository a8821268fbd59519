// Fuzzing the heartbeat datagram parser (fast-check). Pure: openHeartbeat never throws
// on any input, accepts a datagram only when it is exactly one its agent signed, never
// accepts one signed with another secret, and never accepts the same or an older
// heartbeat twice, whatever the order of delivery (replays, reordering, old boots).
// Live: a running local gateway's heartbeat port gets random, mutated, oversized and
// forged datagrams among valid ones: it stays alive and counts exactly the valid ones.
//
// Budget: FUZZ_RUNS (pure; the live gateway gets a twentieth of it), FUZZ_SEED.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  applyMutations,
  brief,
  bytesEqual,
  dropBulk,
  fc,
  fcParams,
  fuzzRuns,
  HB_AGENT,
  HB_NOW,
  HB_SECRET,
  HB_WALL,
  heartbeatArb,
  heartbeatBitFlipProperty,
  mutationArb,
  sendDatagrams,
} from "./lib/fuzz.ts";
import { Gateway, tempDir, waitFor } from "./lib/cluster.ts";
import {
  decodeHeartbeat,
  encodeHeartbeat,
  type Heartbeat,
  MAX_DATAGRAM_BYTES,
  openHeartbeat,
  ReplayGuard,
} from "../src/heartbeat/codec.ts";

const PURE_RUNS = fuzzRuns(2000);
const LIVE_RUNS = fuzzRuns(100, 1 / 20);
const secrets = new Map([[HB_AGENT, HB_SECRET]]);
const OTHER_SECRET = new TextEncoder().encode("another-secret-of-32-bytes-00000");

const pure = suite("fuzz heartbeat: pure parser");

pure(
  "any bytes: openHeartbeat and decodeHeartbeat never throw, and refuse what is not a signed datagram",
  () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 600 }),
          fc.tuple(heartbeatArb, fc.array(mutationArb(32), { minLength: 1, maxLength: 4 })).map(
            ([hb, ms]) => {
              const wire = encodeHeartbeat(hb, HB_SECRET);
              return { wire, bytes: applyMutations(wire, ms) };
            },
          ),
        ),
        (input) => {
          const bytes = brief(input instanceof Uint8Array ? input : input.bytes as Uint8Array<ArrayBuffer>);
          decodeHeartbeat(bytes);
          const r = openHeartbeat(bytes, secrets, new ReplayGuard(), HB_NOW);
          if (input instanceof Uint8Array) {
            assert.not.ok(r.ok, "random bytes were accepted");
          } else {
            assert.is(r.ok, bytesEqual(input.bytes, input.wire), "accepted exactly when unmodified");
          }
          if (bytes.length > MAX_DATAGRAM_BYTES) assert.not.ok(r.ok);
        },
      ),
      fcParams(PURE_RUNS),
    );
  },
);

pure("every single flipped bit is refused", () => {
  fc.assert(heartbeatBitFlipProperty(openHeartbeat), fcParams(PURE_RUNS));
});

pure("a datagram signed with another secret, or for an unknown agent, is never accepted", () => {
  fc.assert(
    fc.property(heartbeatArb, fc.boolean(), (hb, unknown) => {
      const wire = unknown
        ? encodeHeartbeat({ ...hb, agentId: "stranger" }, HB_SECRET)
        : encodeHeartbeat(hb, OTHER_SECRET);
      const r = openHeartbeat(wire, secrets, new ReplayGuard(), HB_NOW);
      assert.not.ok(r.ok);
      if (!r.ok) assert.is(r.reason, unknown ? "unknown-agent" : "bad-mac");
    }),
    fcParams(PURE_RUNS),
  );
});

/** Valid datagrams from up to three boots, delivered in any order, with duplicates (replays). */
const deliveryArb = fc.record({
  boots: fc.uniqueArray(fc.bigInt(0n, 2n ** 64n - 1n), { minLength: 1, maxLength: 3 }),
  sent: fc.array(
    fc.record({
      boot: fc.nat(2),
      seq: fc.integer({ min: 0, max: 30 }),
      skew: fc.integer({ min: -400, max: 400 }),
    }),
    { minLength: 1, maxLength: 25 },
  ),
  replays: fc.array(fc.nat(), { maxLength: 15 }),
});

pure("replayed, reordered and old-boot datagrams: no heartbeat is accepted twice, none out of order", () => {
  fc.assert(
    fc.property(deliveryArb, ({ boots, sent, replays }) => {
      const wire = sent.map((s) => {
        const hb: Heartbeat = {
          agentId: HB_AGENT,
          boot: boots[s.boot % boots.length],
          seq: s.seq,
          // seconds of skew: beyond the guard's 300 s for a few
          sentAtMs: HB_WALL + s.skew * 1000,
          status: { healthy: true, detail: "" },
        };
        return { hb, bytes: encodeHeartbeat(hb, HB_SECRET) };
      });
      const delivery = [...wire, ...replays.map((i) => wire[i % wire.length])];
      const guard = new ReplayGuard();
      const seen = new Set<string>();
      const highest = new Map<bigint, number>();
      const left: bigint[] = [];
      let current: bigint | undefined;
      let lastSentAt: number | undefined; // the agent's clock as last accepted (the receiver's monotonic clock stands still)
      for (const d of delivery) {
        const r = openHeartbeat(d.bytes, secrets, guard, HB_NOW);
        if (!r.ok) continue;
        const key = `${d.hb.boot}/${d.hb.seq}`;
        assert.not.ok(seen.has(key), `heartbeat ${key} accepted twice`);
        seen.add(key);
        const h = highest.get(d.hb.boot);
        assert.ok(h === undefined || d.hb.seq > h, `seq ${d.hb.seq} of boot accepted after ${h}`);
        highest.set(d.hb.boot, d.hb.seq);
        if (d.hb.boot !== current) {
          assert.not.ok(left.includes(d.hb.boot), "a boot the agent left was accepted again");
          const recent = Math.abs(d.hb.sentAtMs - HB_WALL) <= 300_000 ||
            (lastSentAt !== undefined && Math.abs(d.hb.sentAtMs - lastSentAt) <= 300_000);
          assert.ok(recent, "a stale datagram started a boot");
          if (current !== undefined) left.push(current);
          current = d.hb.boot;
        }
        lastSentAt = d.hb.sentAtMs;
      }
    }),
    fcParams(PURE_RUNS),
  );
});

pure.run();

// ---------------------------------------------------------------------------
// live: a local gateway's heartbeat port

const live = suite("fuzz heartbeat: live local gateway");
let dir = "";
let gw: Gateway;
let target = { host: "127.0.0.1", port: 0 };
let gwDied = false;
const boot = 0x1234_5678_9abc_def0n;
let seq = 0;
let sentTotal = 0, validTotal = 0;

interface HbStats {
  accepted: number;
  dropped: Record<string, number>;
}
async function hbStats(): Promise<HbStats> {
  return ((await gw.status()) as unknown as { heartbeats: HbStats }).heartbeats;
}
const counted = (s: HbStats) => s.accepted + Object.values(s.dropped).reduce((a, b) => a + b, 0);

live.before(async () => {
  dir = await tempDir("fuzzhb");
  await Deno.writeTextFile(`${dir}/hb.secret`, new TextDecoder().decode(HB_SECRET) + "\n", { mode: 0o600 });
  gw = await new Gateway({ dir, agents: { [HB_AGENT]: `${dir}/hb.secret` } }).start();
  gw.proc.exited.then(() => gwDied = true);
  const ready = await gw.proc.waitForLog("local gateway ready");
  const [host, port] = String(ready.heartbeats).split(":");
  target = { host, port: Number(port) };
});
live.after(async () => {
  await gw?.proc.stop();
  await dropBulk(dir);
});

const datagramArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ t: "valid" as const }) },
  {
    weight: 3,
    arbitrary: fc.array(mutationArb(32), { minLength: 1, maxLength: 3 }).map((ms) => ({
      t: "mutated" as const,
      ms,
    })),
  },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 1400 }).map((b) => ({ t: "random" as const, b })) },
  {
    weight: 1,
    arbitrary: fc.uint8Array({ minLength: MAX_DATAGRAM_BYTES + 1, maxLength: 1400 }).map((b) => ({
      t: "random" as const,
      b,
    })),
  },
  { weight: 1, arbitrary: fc.constant({ t: "replay" as const }) },
  { weight: 1, arbitrary: fc.constant({ t: "forged" as const }) },
);

live(
  "random, mutated, replayed and forged datagrams: the gateway lives and accepts exactly the valid ones",
  async () => {
    const before = await hbStats();
    let lastValid: Uint8Array | undefined;
    await fc.assert(
      fc.asyncProperty(fc.array(datagramArb, { minLength: 1, maxLength: 20 }), async (ds) => {
        const out: Uint8Array[] = [];
        let valid = 0;
        for (const d of ds) {
          const hb = (s: number): Heartbeat => ({
            agentId: HB_AGENT,
            boot,
            seq: s,
            sentAtMs: Date.now(),
            status: { healthy: true, detail: "fuzz" },
          });
          if (d.t === "valid") {
            lastValid = encodeHeartbeat(hb(++seq), HB_SECRET);
            out.push(lastValid);
            valid++;
          } else if (d.t === "mutated") {
            const w = encodeHeartbeat(hb(seq + 1), HB_SECRET);
            const m = applyMutations(w, d.ms);
            out.push(m);
            if (bytesEqual(m, w)) {
              seq++;
              valid++;
            }
          } else if (d.t === "random") {
            out.push(d.b);
          } else if (d.t === "replay") {
            out.push(lastValid ?? encodeHeartbeat(hb(0), OTHER_SECRET));
          } else {
            out.push(encodeHeartbeat(hb(seq + 1), OTHER_SECRET));
          }
        }
        await sendDatagrams(out, target);
        sentTotal += out.length;
        validTotal += valid;
        const want = counted(before) + sentTotal;
        const s = await waitFor(
          async () => {
            const s = await hbStats();
            return counted(s) >= want ? s : undefined;
          },
          10_000,
          "the gateway to count every datagram",
        );
        assert.not.ok(gwDied, "the gateway died");
        assert.is(s.accepted - before.accepted, validTotal, "accepted exactly the valid datagrams");
      }),
      fcParams(LIVE_RUNS, { endOnFailure: true }),
    );
    const s = await hbStats();
    console.log(
      `  live heartbeat fuzz: ${sentTotal} datagrams, ${validTotal} valid; dropped ${
        JSON.stringify(s.dropped)
      }`,
    );
  },
);

live.run();
