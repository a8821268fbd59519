// The gateway's detector QoS configuration per agent link, fed synthetic heartbeats (the agent's
// clock is the test's): measuring first, then a derived setting the agent is told (its period
// over the control link) and its heartbeats are judged with; targets no setting meets give the
// `unmet` state with the reason, the best achievable QoS and an alarm; without targets the flags
// are back.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { DetectorQos, type LinkQos, type TargetSource } from "../src/failover/detector-qos.ts";
import type { AlarmInput } from "../src/alarms/alarm.ts";
import type { HeartbeatMeta } from "../src/heartbeat/channel.ts";
import { mulberry32 } from "../src/detector/qos.ts";

const t = suite("detector QoS manager");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t(
  "measure, derive, tell the agent, judge with the derived margin; unmeetable targets; back to the flags",
  async () => {
    let now = 1_000_000;
    const rng = mulberry32(5);
    const orders: number[] = [], probes: bigint[] = [], alarms: AlarmInput[] = [];
    const sent = new Map<bigint, number>();
    let targets = new Map<string, TargetSource>([["a1", {
      targets: { detectionMs: 1000, mistakeRecurrenceMs: 3_600_000, mistakeDurationMs: 1000 },
      from: ["task db"],
    }]]);
    const q = new DetectorQos({
      mode: "chen",
      fixed: { etaMs: 100, alphaMs: 200 },
      targets: () => Promise.resolve(targets),
      order: (agent, eta) => {
        assert.is(agent, "a1");
        orders.push(eta);
        return true;
      },
      probe: (peer, nonce) => {
        assert.is(peer, "10.0.0.2:5000");
        probes.push(nonce);
        sent.set(nonce, now);
      },
      alarm: (a) => alarms.push(a),
      clock: () => now,
      deriveEveryMs: 100,
      probeEveryMs: 100,
    });
    q.start();
    let seq = 0, boot = true;
    /** `n` heartbeats at period `eta` (reported when `report`), 2 ± 1 ms late, echoing any probe. */
    const feed = (n: number, eta: number, report: boolean) => {
      let last;
      for (let i = 0; i < n; i++) {
        seq++;
        now += eta;
        const nonce = probes.shift();
        const meta: HeartbeatMeta = {
          boot: 1n,
          newBoot: boot,
          peer: "10.0.0.2:5000",
          ...(report ? { intervalMs: eta } : {}),
          ...(nonce !== undefined ? { echo: { nonce, holdMs: (now - sent.get(nonce)!) - 4 } } : {}),
        };
        boot = false;
        last = q.heartbeat("a1", seq, now + 1 + 2 * rng(), meta);
      }
      return last!;
    };
    const link = () => q.status().find((l) => l.agent === "a1")!;
    const until = async (what: string, ok: (l: LinkQos) => boolean) => {
      for (let i = 0; i < 40 && !ok(link()); i++) {
        feed(5, link().running.etaMs, orders.length > 0);
        await sleep(60);
      }
      assert.ok(ok(link()), `${what}: ${JSON.stringify(link())}`);
    };
    try {
      assert.equal(feed(1, 100, false), { etaMs: 100, alphaMs: 200 }, "unknown at first: the flags");
      assert.is(link().state, "measuring");
      await until("a derived setting", (l) => l.state === "met" && l.derived !== null);
      const derived = link().derived!;
      assert.ok(derived.etaMs > 100, `a LAN link needs fewer heartbeats: ${derived.etaMs}`);
      await until("the agent told its period", () => orders.at(-1) === derived.etaMs);
      assert.equal(link().running, { etaMs: 100, alphaMs: 200 }, "until its heartbeats come at it");
      assert.equal(feed(1, derived.etaMs, true), { etaMs: derived.etaMs, alphaMs: derived.alphaMs });
      assert.ok(link().derived!.predicted.detectionMs <= 1000);

      // detection within 30 ms cannot be had: say so, run the best, raise an alarm
      targets = new Map([["a1", {
        targets: { detectionMs: 30, mistakeRecurrenceMs: 3_600_000, mistakeDurationMs: 1000 },
        from: ["task db"],
      }]]);
      await until("unmet", (l) => l.state === "unmet");
      const l = link();
      assert.match(l.reason!, /detection within 30\.0 ms/);
      assert.ok(l.best && l.best.predicted.detectionMs > 30);
      assert.equal(alarms.map((a) => [a.kind, a.subject, a.resolved ?? false]), [
        ["detector-targets-unmet", "agent:a1", false],
      ]);

      // no targets: the flags' period again, and the alarm resolved
      targets = new Map();
      await until("fixed", (x) => x.state === "fixed");
      assert.equal(alarms.map((a) => a.resolved ?? false), [false, true]);
      await until("the flags' period ordered", () => orders.at(-1) === 100);
      assert.equal(feed(1, 100, true), { etaMs: 100, alphaMs: 200 });
    } finally {
      q.close();
    }
  },
);

t.run();
