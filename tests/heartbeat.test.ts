import { suite } from "uvu";
import * as assert from "uvu/assert";
import dgram from "node:dgram";
import {
  decodeHeartbeat,
  encodeHeartbeat,
  type Heartbeat,
  MAX_DETAIL_BYTES,
  openHeartbeat,
  ReplayGuard,
  verifyHeartbeat,
} from "../src/heartbeat/codec.ts";
import { startHeartbeatReceiver, startHeartbeatSender } from "../src/heartbeat/channel.ts";
import { setLogSink } from "../src/log.ts";

const secret = new TextEncoder().encode("0123456789abcdef-agent-a");
const otherSecret = new TextEncoder().encode("fedcba9876543210-agent-a");
const secrets = new Map([["app-1", secret]]);
const wallNow = 1_700_000_000_000;
/** The receiver's clocks: wall, and a monotonic clock that stands still unless a test moves it. */
const at = (wallMs: number, monoMs = 0) => ({ wallMs, monoMs });

const hb = (over: Partial<Heartbeat> = {}): Heartbeat => ({
  agentId: "app-1",
  boot: 0x0123456789abcdefn,
  seq: 42,
  sentAtMs: wallNow,
  status: { healthy: true, detail: "ok" },
  ...over,
});

const codec = suite("codec");

codec("round trip", () => {
  const h = hb({
    boot: 0xfedcba9876543210n,
    seq: Number.MAX_SAFE_INTEGER,
    status: { healthy: false, detail: "é ✓" },
  });
  const wire = encodeHeartbeat(h, secret);
  assert.equal(decodeHeartbeat(wire), { ok: true, heartbeat: h });
  assert.ok(verifyHeartbeat(wire, secret));
});

codec("the secret is not in the datagram", () => {
  const wire = new TextDecoder("latin1").decode(encodeHeartbeat(hb(), secret));
  assert.not.ok(wire.includes("0123456789abcdef"));
});

codec("long details are cut at a character boundary", () => {
  const detail = "a" + "✓".repeat(100); // 1 + 300 bytes
  const out = decodeHeartbeat(encodeHeartbeat(hb({ status: { healthy: true, detail } }), secret));
  assert.ok(out.ok);
  if (!out.ok) return;
  assert.is(out.heartbeat.status.detail, "a" + "✓".repeat(66)); // 199 bytes ≤ 200
  assert.ok(new TextEncoder().encode(out.heartbeat.status.detail).length <= MAX_DETAIL_BYTES);
});

codec("every flipped bit is rejected", () => {
  const wire = encodeHeartbeat(hb(), secret);
  for (let bit = 0; bit < wire.length * 8; bit++) {
    const bad = wire.slice();
    bad[bit >> 3] ^= 1 << (bit & 7);
    const r = openHeartbeat(bad, secrets, new ReplayGuard(), at(wallNow));
    assert.not.ok(r.ok, `bit ${bit} flipped was accepted`);
  }
  assert.ok(openHeartbeat(wire, secrets, new ReplayGuard(), at(wallNow)).ok, "the original passes");
});

codec("wrong secret, unknown agent, malformed, oversized", () => {
  const guard = new ReplayGuard();
  const reason = (d: Uint8Array) => {
    const r = openHeartbeat(d, secrets, guard, at(wallNow));
    return r.ok ? "ok" : r.reason;
  };
  assert.is(reason(encodeHeartbeat(hb(), otherSecret)), "bad-mac");
  assert.is(reason(encodeHeartbeat(hb({ agentId: "app-2" }), secret)), "unknown-agent");
  assert.is(reason(new Uint8Array(40)), "malformed");
  assert.is(reason(encodeHeartbeat(hb(), secret).subarray(0, 70)), "malformed");
  assert.is(reason(new Uint8Array(600)), "oversized");
  assert.is(reason(encodeHeartbeat(hb(), secret)), "ok", "none of those touched the replay state");
});

codec("replayed and older datagrams are rejected", () => {
  const guard = new ReplayGuard();
  const open = (h: Heartbeat) => openHeartbeat(encodeHeartbeat(h, secret), secrets, guard, at(wallNow));
  const first = encodeHeartbeat(hb({ seq: 10 }), secret);
  assert.equal(openHeartbeat(first, secrets, guard, at(wallNow)), {
    ok: true,
    heartbeat: hb({ seq: 10 }),
    newBoot: true,
  });
  assert.equal(openHeartbeat(first, secrets, guard, at(wallNow)), {
    ok: false,
    reason: "replay",
    agentId: "app-1",
  });
  const next = open(hb({ seq: 11 }));
  assert.ok(next.ok && !next.newBoot);
  assert.equal(open(hb({ seq: 9 })), { ok: false, reason: "replay", agentId: "app-1" });
  assert.equal(open(hb({ seq: 11 })), { ok: false, reason: "replay", agentId: "app-1" });
  assert.ok(open(hb({ seq: 15 })).ok, "gaps are fine");
});

codec("a restarted agent's new boot is accepted; its old boot is not", () => {
  const guard = new ReplayGuard();
  const open = (h: Heartbeat, now = wallNow) =>
    openHeartbeat(encodeHeartbeat(h, secret), secrets, guard, at(now));
  assert.ok(open(hb({ boot: 1n, seq: 500 })).ok);
  const restarted = open(hb({ boot: 2n, seq: 1 }));
  assert.ok(restarted.ok && restarted.newBoot, "new boot restarts numbering");
  assert.ok(open(hb({ boot: 2n, seq: 2 })).ok);
  const replayOld = open(hb({ boot: 1n, seq: 501 }));
  assert.equal(replayOld, { ok: false, reason: "retired-boot", agentId: "app-1" });
});

codec("a new boot must be recent by its sender clock", () => {
  const guard = new ReplayGuard({ maxBootSkewMs: 60_000 });
  const open = (h: Heartbeat) => openHeartbeat(encodeHeartbeat(h, secret), secrets, guard, at(wallNow));
  assert.equal(open(hb({ boot: 7n, sentAtMs: wallNow - 61_000 })), {
    ok: false,
    reason: "stale-boot",
    agentId: "app-1",
  });
  assert.ok(open(hb({ boot: 7n, sentAtMs: wallNow - 59_000 })).ok);
  // within a boot the sequence number decides, not the clock
  assert.ok(open(hb({ boot: 7n, seq: 43, sentAtMs: wallNow - 3_600_000 })).ok);
});

codec(
  "a clock jump on the agent's host: its restart after the jump is accepted, old recordings are not",
  () => {
    const guard = new ReplayGuard(); // 5 min
    const open = (h: Heartbeat, wall: number, mono: number) =>
      openHeartbeat(encodeHeartbeat(h, secret), secrets, guard, at(wall, mono));
    assert.ok(open(hb({ boot: 1n, seq: 1 }), wallNow, 1000).ok);
    // the agent's clock steps 10 min forward, then 1 s later it restarts (the receiver's clocks go on)
    const jumped = wallNow + 600_000;
    assert.ok(open(hb({ boot: 1n, seq: 2, sentAtMs: jumped + 100 }), wallNow + 100, 1100).ok);
    const restart = open(hb({ boot: 2n, seq: 1, sentAtMs: jumped + 1100 }), wallNow + 1100, 2100);
    assert.ok(restart.ok && restart.newBoot, "the restarted agent is not stale by its own clock");
    // a boot recorded 20 min before (never seen here) fits neither the agent's clock nor ours
    const recorded = open(hb({ boot: 3n, seq: 9, sentAtMs: wallNow - 1_200_000 }), wallNow + 1200, 2200);
    assert.equal(recorded, { ok: false, reason: "stale-boot", agentId: "app-1" });
  },
);

codec("a clock jump on the receiver's host: the agent's restart is judged by the agent's clock", () => {
  const guard = new ReplayGuard();
  const open = (h: Heartbeat, wall: number, mono: number) =>
    openHeartbeat(encodeHeartbeat(h, secret), secrets, guard, at(wall, mono));
  assert.ok(open(hb({ boot: 1n, seq: 1 }), wallNow, 50_000).ok);
  // the receiver's wall clock steps back 2 h; its monotonic clock does not
  const restart = open(
    hb({ boot: 2n, seq: 1, sentAtMs: wallNow + 3000 }),
    wallNow - 7_200_000 + 3000,
    53_000,
  );
  assert.ok(restart.ok && restart.newBoot);
  // an agent never heard from can only be judged by the wall clock: a 2 h skew is refused
  const other = new Map([["app-9", secret]]);
  const unknown = openHeartbeat(
    encodeHeartbeat(hb({ agentId: "app-9", sentAtMs: wallNow }), secret),
    other,
    guard,
    at(wallNow - 7_200_000, 53_000),
  );
  assert.equal(unknown, { ok: false, reason: "stale-boot", agentId: "app-9" });
});

codec.run();

const udp = suite("udp");

udp("sender → receiver on 127.0.0.1 at ~η; bad datagrams are dropped, counted and logged once", async () => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  const got: { seq: number; now: number; healthy: boolean; detail: string; newBoot: boolean }[] = [];
  const receiver = await startHeartbeatReceiver({
    host: "127.0.0.1",
    port: 0,
    secrets,
    onHeartbeat: (agentId, seq, status, now, meta) => {
      assert.is(agentId, "app-1");
      got.push({ seq, now, ...status, newBoot: meta.newBoot });
    },
  });
  assert.ok(receiver.port > 0);
  const eta = 50;
  let healthy = true;
  const sender = startHeartbeatSender({
    host: "127.0.0.1",
    port: receiver.port,
    agentId: "app-1",
    secret,
    intervalMs: eta,
    getStatus: () => ({ healthy, detail: healthy ? "ok" : "db down" }),
  });
  const garbage = dgram.createSocket("udp4");
  const send = (bytes: Uint8Array) =>
    new Promise<void>((resolve, reject) =>
      garbage.send(bytes, receiver.port, "127.0.0.1", (err) => err ? reject(err) : resolve())
    );
  try {
    await new Promise((r) => setTimeout(r, 400));
    for (let i = 0; i < 5; i++) await send(crypto.getRandomValues(new Uint8Array(64)));
    await send(encodeHeartbeat(hb({ sentAtMs: Date.now() }), otherSecret));
    healthy = false;
    await new Promise((r) => setTimeout(r, 600));
  } finally {
    await sender.close();
    garbage.close();
    await receiver.close();
    setLogSink((l) => console.error(l));
  }

  const st = receiver.stats();
  assert.is(st.dropped.malformed, 5);
  assert.is(st.dropped["bad-mac"], 1);
  assert.is(st.accepted, got.length);

  // ~1 s at η = 50 ms
  assert.ok(got.length >= 16 && got.length <= 22, `${got.length} heartbeats`);
  for (let i = 1; i < got.length; i++) assert.ok(got[i].seq > got[i - 1].seq, "seq increases");
  const meanGap = (got.at(-1)!.now - got[0].now) / (got.length - 1);
  assert.ok(Math.abs(meanGap - eta) < 10, `mean gap ${meanGap}`);
  assert.equal(got.map((g) => g.newBoot), got.map((_, i) => i === 0));
  assert.ok(got[0].healthy && got[0].detail === "ok");
  assert.ok(!got.at(-1)!.healthy && got.at(-1)!.detail === "db down");

  // six bad datagrams from one peer within a second: one log line, with the peer
  const drops = lines.map((l) => JSON.parse(l)).filter((r) => r.msg === "heartbeat dropped");
  assert.is(drops.length, 1, lines.join("\n"));
  assert.match(drops[0].peer, /^127\.0\.0\.1:\d+$/);
  const text = lines.join("\n");
  for (const form of [new TextDecoder().decode(secret), btoa(String.fromCharCode(...secret))]) {
    assert.not.ok(text.includes(form), "secret in the log");
  }
});

udp("a short secret is refused", () => {
  assert.throws(() =>
    startHeartbeatSender({
      host: "127.0.0.1",
      port: 9,
      agentId: "x",
      secret: new Uint8Array(8),
      getStatus: () => ({ healthy: true, detail: "" }),
    })
  );
});

udp.run();
