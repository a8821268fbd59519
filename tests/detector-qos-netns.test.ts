// The QoS-configured detector on a real link, in network namespaces: the agent's heartbeats (and
// the gateway's probes, back) go through a relay that delays and drops datagrams both ways. The
// service is given targets (--service …,td,tmr,tm); the gateway measures the link, derives η and
// α, tells the agent its period; when the relay's profile changes it derives them again and the
// agent follows. Over the run no false detection happens (fewer than the run's length over T_MR^L,
// which is none), a killed server is detected within T_D^U, and once it is back its failure counts
// as a real one, with the detection time the gateway measured.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { FailoverLab } from "./lib/failover-lab.ts";
import { RoleProcess, tempDir, waitFor } from "./lib/cluster.ts";
import type { LinkQos } from "../src/failover/detector-qos.ts";

const t = suite("detector QoS in namespaces");
const prereq = { root: true, tools: ["ip", "iptables", "iptables-save"] };
const lib = new URL("./lib/", import.meta.url).pathname;

const TD = 1500, TMR = 10 * 60_000, TM = 1000;

async function link(lab: FailoverLab): Promise<LinkQos | undefined> {
  return ((await lab.api("/api/detector")) as LinkQos[]).find((l) => l.agent === "app1");
}

/** The detection budget α + 2η of a setting. */
const budget = (x: LinkQos["running"]) => x.alphaMs + 2 * x.etaMs;

/**
 * Until a setting derived for the link runs (the agent's heartbeats come at its period), one that
 * `wanted` accepts if given.
 */
async function settled(
  lab: FailoverLab,
  what: string,
  wanted?: (derived: NonNullable<LinkQos["derived"]>) => boolean,
): Promise<LinkQos> {
  let last: LinkQos | undefined;
  await waitFor(
    async () => {
      last = await link(lab);
      if (!last?.derived || last.state !== "met") return false;
      const runs = last.running.etaMs === last.derived.etaMs && last.running.alphaMs === last.derived.alphaMs;
      // and measured again at that period
      return runs && (!wanted || wanted(last.derived)) && last.link !== null && last.predicted !== null;
    },
    // a new link profile can take several derivations: while the loss estimate has seen no drop
    // the period moves a little, and each new period measures the link anew (about 25 s at ~0.5 s)
    240_000,
    what,
    500,
  ).catch((e) => {
    throw new Error(`${(e as Error).message}; last: ${JSON.stringify(last)}`);
  });
  return last!;
}

t(
  "η and α follow the link's profile; no false detection; a killed server is detected within T_D^U",
  async () => {
    if (!need("detector QoS in namespaces", prereq)) return;
    const lab = new FailoverLab();
    const control = `${await tempDir("relay")}/relay.json`;
    await Deno.writeTextFile(control, JSON.stringify({ delayMs: 2, jitterMs: 1, lossPct: 0 }));
    try {
      await lab.start({
        jitter: { meanMs: 2, spreadMs: 1, script: `${lib}udp-relay.ts`, control },
        serviceTargets: `td:${TD}ms,tmr:${TMR / 60_000}m,tm:${TM}ms`,
      });
      const calm = await settled(lab, "a setting derived for the calm link, and running");
      console.log(`\n  calm link: η ${calm.running.etaMs} ms, α ${calm.running.alphaMs} ms`, calm.link);
      assert.equal(calm.targets, { detectionMs: TD, mistakeRecurrenceMs: TMR, mistakeDurationMs: TM });
      assert.equal(calm.targetsFrom, ["service web"]);
      const promised = calm.derived!.predicted;
      assert.ok(
        promised.detectionMs <= TD && promised.mistakeRecurrenceMs >= TMR && promised.mistakeDurationMs <= TM,
      );
      // what the running setting guarantees on the link as measured now: close to that
      assert.ok(calm.predicted && calm.predicted.detectionMs <= TD * 1.05, JSON.stringify(calm.predicted));

      // the link gets slow and jittery, and loses heartbeats: 38 ms more delay each way
      const changed = Date.now();
      await Deno.writeTextFile(control, JSON.stringify({ delayMs: 40, jitterMs: 30, lossPct: 2 }));
      // Derived again, and the added delay came out of the detection budget α + 2η (by 39–52 ms in
      // the runs logged so far). How far the period itself moves depends on the loss the run happens
      // to see: η fell by 27–42 % in those, by 11 % in one that saw 0.7 % loss instead of 2 %.
      const rough = await settled(
        lab,
        "a setting derived for the rough link, with a smaller budget, and running",
        (d) => d.at > changed && budget(d) < budget(calm.running) - 38 / 2,
      );
      console.log(`  rough link: η ${rough.running.etaMs} ms, α ${rough.running.alphaMs} ms`, rough.link);
      assert.ok(rough.link!.meanDelayMs > calm.link!.meanDelayMs + 20, "the delay was measured");
      // that setting promised detection within T_D^U
      assert.ok(rough.derived!.predicted.detectionMs <= TD, JSON.stringify(rough.derived!.predicted));

      // no false detection over the run: fewer than (run length / T_MR^L), i.e. none here
      const watched = rough.observed.watchedMs;
      assert.ok(watched < TMR);
      assert.is(rough.observed.mistakes, 0, `false detections in ${Math.round(watched / 1000)} s`);
      const audit = await lab.api("/api/audit?limit=1000") as {
        subject: string;
        kind: string;
        toState: string;
      }[];
      assert.not.ok(
        audit.some((e) => e.subject === "agent:app1" && e.kind === "detector" && e.toState === "FAILURE"),
      );
      assert.ok(
        audit.some((e) => e.subject === "agent:app1" && e.kind === "detector-qos" && e.toState === "met"),
      );

      assert.is(await lab.serviceState(), "protected", "nothing failed over meanwhile");

      // the server dies: FAILURE within T_D^U of the kill (the audit records it after the deadline)
      const killed = Date.now();
      lab.agent.kill("SIGKILL");
      let failedAt = 0;
      await waitFor(
        async () => {
          const rows = await lab.api("/api/audit?limit=50") as {
            subject: string;
            kind: string;
            toState: string;
            time: number;
          }[];
          failedAt = rows.find((e) =>
            e.subject === "agent:app1" && e.kind === "detector" && e.toState === "FAILURE"
          )
            ?.time ?? 0;
          return failedAt > 0;
        },
        20_000,
        "FAILURE of the killed server",
        100,
      );
      console.log(`  detected ${failedAt - killed} ms after the kill (target ${TD} ms)`);
      assert.ok(failedAt - killed <= TD, `detected after ${failedAt - killed} ms`);

      // the agent comes back (a new boot): the failure was real, and its detection time is kept
      lab.agent = new RoleProcess(lab.agent.name, lab.agent.args, lab.agent.logPath, lab.agent.opts);
      let observed: LinkQos["observed"] | undefined;
      await waitFor(
        async () => {
          observed = (await link(lab))?.observed;
          return (observed?.detections.length ?? 0) > 0;
        },
        30_000,
        "the restarted agent's failure to count as a detection",
        250,
      );
      const measured = observed!.detections[0].ms;
      console.log(`  the gateway measured ${Math.round(measured)} ms (from the last heartbeat's sending)`);
      assert.ok(measured > 0 && measured <= TD + 100, `${measured}`);
      assert.is(observed!.mistakes, 0, "a real failure is no false detection");
    } finally {
      await lab.stop();
    }
  },
);

t.run();
