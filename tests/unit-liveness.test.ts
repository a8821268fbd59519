// The gateway's liveness over its agents' heartbeats, on a clock the test moves: a stall of the
// gateway itself (its heartbeats wait in the socket) is not an agent's failure; a real silence
// still is, one poll later.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Liveness } from "../src/failover/liveness.ts";
import type { HeartbeatMeta } from "../src/heartbeat/channel.ts";

const t = suite("liveness");

const settings = { mode: "chen", etaMs: 100, alphaMs: 50, window: 10, phiSuspect: 3, phiFailure: 8 } as const;
const meta: HeartbeatMeta = { boot: 1n, newBoot: false, peer: "10.0.0.2:7001" };
const healthy = { healthy: true, detail: "" };

function watch() {
  let now = 0;
  const failures: string[] = [];
  const transitions: string[] = [];
  const live = new Liveness({
    settings,
    audit: { record: () => Promise.resolve() },
    onTransition: (agent, tr) => transitions.push(`${agent} ${tr.to}`),
    clock: () => now,
  });
  live.onFailure((agent) => failures.push(agent));
  // heartbeats every η up to `until`, with the gateway's own poll in between
  const beat = (agent: string, from: number, until: number) => {
    for (let at = from; at <= until; at += 100) {
      now = at;
      live.heartbeat(agent, at / 100, healthy, at, meta);
      now = at + 10;
      live.poll();
    }
  };
  return { live, failures, transitions, beat, set: (ms: number) => now = ms };
}

t("a stall of the gateway with heartbeats queued in its socket is no failure", () => {
  const w = watch();
  try {
    w.beat("app1", 100, 1000);
    // the gateway stalls 3 s; the agent's heartbeats queue and are read, oldest first, after the poll
    w.set(4010);
    w.live.poll();
    for (let seq = 11; seq <= 40; seq++) w.live.heartbeat("app1", seq, healthy, 4011, meta);
    w.set(4020);
    w.live.poll();
    assert.equal(w.live.status().map((s) => s.state), ["TRUST"]);
    assert.equal(w.failures, []);
    assert.equal(w.transitions, [], "no transition at all");
  } finally {
    w.live.close();
  }
});

t("an agent silent through a stall of the gateway fails half the stall after it", () => {
  const w = watch();
  try {
    w.beat("app1", 100, 1000);
    // the last poll at 1010, the next at 4010: 3 s stalled, the verdict waits until 4010 + 1.5 s
    w.set(4010);
    assert.is(w.live.hostUntrusted("app1"), undefined, "not judged while the queue is unread");
    for (let at = 4020; at < 5510; at += 10) {
      w.set(at);
      w.live.poll();
    }
    assert.equal(w.failures, [], "still within the grace");
    w.set(5510);
    w.live.poll();
    assert.equal(w.failures, ["app1"]);
    assert.equal(w.transitions, ["app1 SUSPECT", "app1 FAILURE"]);
  } finally {
    w.live.close();
  }
});

t("without a stall, silence is judged at the freshness points", () => {
  const w = watch();
  try {
    w.beat("app1", 100, 1000);
    // polls every 10 ms: τ = 1000 + 100 + 50, FAILURE η later
    for (let at = 1020; at <= 1300; at += 10) {
      w.set(at);
      w.live.poll();
    }
    assert.equal(w.transitions, ["app1 SUSPECT", "app1 FAILURE"]);
    assert.equal(w.failures, ["app1"]);
  } finally {
    w.live.close();
  }
});

t.run();
