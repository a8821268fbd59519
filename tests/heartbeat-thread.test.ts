// Heartbeats from their own thread: a busy event loop in the agent does not delay
// them (regression: the fault runner saw 400–520 ms gaps under full write load and a
// false failover), and a loop stalled longer than the stall limit is reported as
// unhealthy. The receiver runs in another process, so its clock is not stalled too.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { startHeartbeatThread } from "../src/heartbeat/channel.ts";

const t = suite("heartbeat thread");
const root = new URL("../", import.meta.url).pathname;
const secret = new TextEncoder().encode("0123456789abcdef0123456789abcdef");

/** A receiver process: prints one JSON line per datagram (arrival time, seq, healthy). */
function receiver() {
  const code = `
import dgram from "node:dgram";
import { decodeHeartbeat } from "${root}src/heartbeat/codec.ts";
const s = dgram.createSocket("udp4");
s.on("message", (m) => {
  const d = decodeHeartbeat(new Uint8Array(m));
  if (d.ok) console.log(JSON.stringify({ t: performance.now(), seq: d.heartbeat.seq, healthy: d.heartbeat.status.healthy }));
});
s.bind(0, "127.0.0.1", () => console.log(JSON.stringify({ port: s.address().port })));
`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines: { t: number; seq: number; healthy: boolean; port?: number }[] = [];
  const ready = (async () => {
    const dec = new TextDecoderStream();
    let buf = "";
    for await (const chunk of child.stdout.pipeThrough(dec)) {
      buf += chunk;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        lines.push(JSON.parse(buf.slice(0, i)));
        buf = buf.slice(i + 1);
      }
    }
  })();
  return { child, lines, done: ready };
}

function busy(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) { /* the agent's data path, hogging its thread */ }
}

t("heartbeats leave on time while the main thread is busy; a long stall reads as unhealthy", async () => {
  const r = receiver();
  while (!r.lines.some((l) => l.port)) await new Promise((res) => setTimeout(res, 20));
  const port = r.lines.find((l) => l.port)!.port!;
  const hb = startHeartbeatThread({
    host: "127.0.0.1",
    port,
    agentId: "a1",
    secret,
    intervalMs: 50,
    stallMs: 400,
    getStatus: () => ({ healthy: true, detail: "ok" }),
  });
  try {
    await new Promise((res) => setTimeout(res, 500));
    busy(300); // below the stall limit: heartbeats continue, still healthy
    await new Promise((res) => setTimeout(res, 300));
    busy(900); // beyond it: heartbeats continue, now unhealthy
    await new Promise((res) => setTimeout(res, 300));
  } finally {
    await hb.close();
  }
  await new Promise((res) => setTimeout(res, 100));
  r.child.kill("SIGTERM");
  await r.done.catch(() => {});
  const beats = r.lines.filter((l) => l.seq !== undefined);
  assert.ok(beats.length >= 30, `heartbeats arrived (${beats.length})`);
  const gaps = beats.slice(1).map((b, i) => b.t - beats[i].t);
  const worst = Math.max(...gaps);
  assert.ok(worst < 200, `no gap near the busy periods (worst ${worst.toFixed(0)} ms for η = 50 ms)`);
  assert.ok(beats.some((b) => !b.healthy), "a stall beyond the limit is reported as unhealthy");
  assert.ok(beats[beats.length - 1].healthy, "and healthy again once the thread answers");
});

t.run();
