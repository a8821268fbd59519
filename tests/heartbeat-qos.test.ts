// The heartbeat extension the QoS configuration uses: a heartbeat may carry the sender's period
// and echo the gateway's probe (the link's round trip), only once the gateway asked for it; the
// gateway may set the period, and the numbering goes on at the new pace.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  decodeHeartbeat,
  decodeProbe,
  encodeHeartbeat,
  encodeProbe,
  type Heartbeat,
  PROBE_BYTES,
} from "../src/heartbeat/codec.ts";
import {
  type HeartbeatMeta,
  startHeartbeatReceiver,
  startHeartbeatSender,
} from "../src/heartbeat/channel.ts";

const secret = new TextEncoder().encode("0123456789abcdef0123456789abcdef");
const hb = (o: Partial<Heartbeat> = {}): Heartbeat => ({
  agentId: "app-1",
  boot: 7n,
  seq: 3,
  sentAtMs: 1_700_000_000_000,
  status: { healthy: true, detail: "ok" },
  ...o,
});

const codec = suite("heartbeat extension");

codec("period and echo round-trip; without them the datagram is the old one", () => {
  const plain = encodeHeartbeat(hb(), secret);
  const ext = encodeHeartbeat(hb({ intervalMs: 12.5, echo: { nonce: 0xdeadbeefn, holdMs: 3.25 } }), secret);
  assert.is(ext.length, plain.length + 16);
  assert.is(ext[5], 3, "healthy and extension bits");
  const d = decodeHeartbeat(ext);
  assert.ok(d.ok);
  if (!d.ok) return;
  assert.is(d.heartbeat.intervalMs, 12.5);
  assert.equal(d.heartbeat.status, { healthy: true, detail: "ok" }, "the healthy bit beside the extension's");
  assert.equal(d.heartbeat.echo, { nonce: 0xdeadbeefn, holdMs: 3.25 });
  const p = decodeHeartbeat(plain);
  assert.ok(p.ok && p.heartbeat.intervalMs === undefined && p.heartbeat.echo === undefined);
  const onlyPeriod = decodeHeartbeat(encodeHeartbeat(hb({ intervalMs: 100 }), secret));
  assert.ok(onlyPeriod.ok && onlyPeriod.heartbeat.echo === undefined, "nonce 0: no echo");
});

codec("a zero period, a cut extension or an unknown flag is malformed; bad values are refused", () => {
  const ext = encodeHeartbeat(hb({ intervalMs: 100 }), secret);
  const zero = ext.slice();
  const at = ext.length - 32 - 16;
  zero.set([0, 0, 0, 0], at);
  assert.equal(decodeHeartbeat(zero), { ok: false, reason: "malformed" });
  const noBit = ext.slice();
  noBit[5] = 1;
  assert.equal(decodeHeartbeat(noBit), { ok: false, reason: "malformed" });
  const unknown = ext.slice();
  unknown[5] = 7;
  assert.equal(decodeHeartbeat(unknown), { ok: false, reason: "malformed" });
  assert.throws(() => encodeHeartbeat(hb({ intervalMs: 0 }), secret), /intervalMs out of range/);
  assert.throws(() => encodeHeartbeat(hb({ echo: { nonce: 1n, holdMs: 0 } }), secret), /echo goes with/);
});

codec("probes: 13 bytes, a non-zero nonce; anything else is not a probe", () => {
  const p = encodeProbe(42n);
  assert.is(p.length, PROBE_BYTES);
  assert.is(decodeProbe(p), 42n);
  assert.is(decodeProbe(encodeProbe(0n)), undefined);
  assert.is(decodeProbe(p.subarray(0, 12)), undefined);
  assert.is(decodeProbe(encodeHeartbeat(hb(), secret)), undefined);
  const bad = p.slice();
  bad[3] = 0x42;
  assert.is(decodeProbe(bad), undefined);
});

const live = suite("heartbeat extension, live");

live("the sender reports its period only once asked, echoes probes and takes a new period", async () => {
  const got: { seq: number; now: number; healthy: boolean; meta: HeartbeatMeta }[] = [];
  const receiver = await startHeartbeatReceiver({
    host: "127.0.0.1",
    port: 0,
    secrets: new Map([["app-1", secret]]),
    onHeartbeat: (_a, seq, status, now, meta) => got.push({ seq, now, healthy: status.healthy, meta }),
  });
  const sender = startHeartbeatSender({
    host: "127.0.0.1",
    port: receiver.port,
    agentId: "app-1",
    secret,
    intervalMs: 20,
    getStatus: () => ({ healthy: true, detail: "ok" }),
  });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  try {
    await sleep(200);
    assert.ok(got.length > 3 && got.every((g) => g.meta.intervalMs === undefined), "not asked: no extension");
    const sentAt = performance.now();
    receiver.probe(got.at(-1)!.meta.peer, 99n);
    await sleep(100);
    const echoed = got.find((g) => g.meta.echo);
    assert.ok(echoed, "the probe is echoed");
    assert.is(echoed.meta.echo!.nonce, 99n);
    const rtt = echoed.now - sentAt - echoed.meta.echo!.holdMs;
    assert.ok(rtt >= 0 && rtt < 20, `round trip ${rtt} ms`);
    assert.is(echoed.meta.intervalMs, 20);
    assert.ok(got.every((g) => g.healthy), "the verdict rides along unchanged");
    assert.is(got.filter((g) => g.meta.echo).length, 1, "one echo per probe");
    assert.throws(() => sender.setInterval(0), /1\.\.60000 ms/);
    const before = got.length;
    sender.setInterval(80);
    await sleep(600);
    const later = got.slice(before);
    // A heartbeat sent just before the change may still be on its way: at most one, with the old period.
    const changed = later.findIndex((g) => g.meta.intervalMs === 80);
    assert.ok(changed === 0 || changed === 1, `the new period shows from heartbeat ${changed} on`);
    assert.ok(later.slice(0, changed).every((g) => g.meta.intervalMs === 20));
    const after = later.slice(changed);
    assert.ok(after.length >= 6 && after.length <= 9, `${after.length} heartbeats in 600 ms at 80 ms`);
    assert.ok(after.every((g) => g.meta.intervalMs === 80));
    assert.is(later[0].seq, got[before - 1].seq + 1, "the numbering goes on");
    for (let i = 1; i < later.length; i++) assert.is(later[i].seq, later[i - 1].seq + 1);
  } finally {
    await sender.close();
    await receiver.close();
  }
});

codec.run();
live.run();
