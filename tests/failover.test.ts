// The service switch end to end, in network namespaces: a failure of the app's
// service, or of its whole host, moves the client's traffic to the remote site
// within seconds, with the data written before the failure; jitter below the
// detector's margin switches nothing; failback and restarts leave exactly the
// recorded rules; the old primary refuses writes.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { FailoverLab, Poller, writeMessage } from "./lib/failover-lab.ts";
import { waitFor } from "./lib/cluster.ts";
import { NbdClient, NbdReplyError } from "./lib/nbd-client.ts";
import { EPERM } from "./lib/nbd-protocol.ts";

const t = suite("failover");
const prereq = { root: true, tools: ["ip", "iptables", "iptables-save"] };
const MESSAGE = "written before the failure";

/** Until the site acknowledged every record (the standby applied them: --ack-after rsp). */
async function replicated(lab: FailoverLab): Promise<void> {
  await waitFor(
    async () => {
      const s = await lab.api("/api/status") as {
        volumes: { lastSeq: number }[];
        sites: { volumes: { ackedSeq: number; state: string }[] }[];
      };
      const v = s.volumes[0];
      return v && s.sites[0]?.volumes[0]?.state === "consistent" &&
        s.sites[0].volumes[0].ackedSeq === v.lastSeq;
    },
    60_000,
    "the remote site to hold everything",
    200,
  );
}

/** A failback of the traffic alone is refused while the local service is not healthy. */
async function failbackRefused(lab: FailoverLab, why: string): Promise<void> {
  const r = await fetch("http://10.77.9.1:7880/api/services/web/failback?traffic-only=1", {
    method: "POST",
    headers: { authorization: `Bearer ${lab.token}` },
  });
  assert.is(r.status, 409, why);
  assert.match((await r.json()).error, /not healthy/);
}

async function audit(lab: FailoverLab) {
  return await lab.api("/api/audit?limit=1000") as {
    subject: string;
    kind: string;
    fromState: string;
    toState: string;
  }[];
}

t(
  "jitter below the margin: SUSPECT may appear, no switch; then a failed service moves to the remote site",
  async () => {
    if (!need("failover in namespaces", prereq)) return;
    const lab = await new FailoverLab().start({ jitter: { meanMs: 20, spreadMs: 60 } });
    const poller = new Poller(lab);
    try {
      await writeMessage(lab, MESSAGE);
      await replicated(lab);
      await waitFor(
        () => poller.answers().some((a) => a.ok && a.body === `local: ${MESSAGE}`),
        20_000,
        "local answers",
      );

      // heartbeats jitter by up to ±60 ms around 20 ms: below α = 200 ms
      await new Promise((r) => setTimeout(r, 8000));
      assert.is(await lab.serviceState(), "protected", "no switch under jitter");
      const events = await audit(lab);
      assert.ok(
        events.some((e) => e.subject === "agent:app1" && e.kind === "detector"),
        "detector transitions are in the audit log",
      );
      assert.not.ok(events.some((e) => e.kind === "switch"), "no switch was attempted");

      // the app's service stops: its agent's checks fail, the gateway fails it over
      await lab.appService!.stop();
      await waitFor(() => lab.serviceState().then((s) => s === "failed-over"), 30_000, "failover", 100);
      await waitFor(
        () => poller.outage("local", "dr1"),
        15_000,
        "the client to be served by the remote site",
      );
      const o = poller.outage("local", "dr1")!;
      console.log(`\n  outage seen by the client (service failure): ${o.ms} ms`);
      assert.ok(o.ms < 3000, `outage under 3 s (${o.ms} ms)`);
      const remoteAnswer = poller.answers().find((a) => a.ok && a.body.startsWith("dr1:"))!;
      assert.is(
        remoteAnswer.body,
        `dr1: ${MESSAGE}`,
        "the remote serves the data written before the failure",
      );

      // the old primary is fenced: an NBD write is refused and nothing is written
      const c = await NbdClient.connect(`${lab.dir}/agent/nbd.sock`);
      await c.go("vol0");
      let code = 0;
      await c.write(0, new Uint8Array(4096).fill(0x41)).catch((e) =>
        code = e instanceof NbdReplyError ? e.code : -1
      );
      assert.is(code, EPERM, "the fenced old primary refuses writes");
      const still = new TextDecoder().decode(await c.read(0, MESSAGE.length));
      assert.is(still, MESSAGE, "nothing was written");
      await c.disconnect();

      // a crash in the middle: the rules are made to match the recorded state at start
      lab.gateway.kill("SIGKILL");
      await lab.gateway.exited;
      await lab.net.run(lab.ns.gw, ["iptables", "-t", "nat", "-F", "CONTINUUM-PRE"]);
      await lab.net.run(lab.ns.gw, [
        "iptables",
        "-t",
        "nat",
        "-A",
        "CONTINUUM-PRE",
        "-d",
        "10.77.1.1/32",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "443",
        "-m",
        "comment",
        "--comment",
        "continuum:stale",
        "-j",
        "DNAT",
        "--to-destination",
        "10.77.3.2:443",
      ]);
      await lab.startGateway();
      const nat = await lab.natRules();
      assert.match(nat, /continuum:web/, "the recorded rule is back");
      assert.not.match(nat, /continuum:stale/, "the stale rule is gone");
      assert.is(
        (nat.match(/-j CONTINUUM-PRE/g) ?? []).length,
        2,
        "one jump from PREROUTING and one from OUTPUT",
      );

      // failback is refused while the local side is unhealthy, accepted once it is healthy again
      await failbackRefused(lab, "failback refused while the local service is down");
      await lab.startAppService();
      await waitFor(
        async () => {
          const a = await lab.appLiveness();
          return a?.serviceHealthy && a.state === "TRUST";
        },
        15_000,
        "the local side to be healthy",
      );
      await lab.api("/api/services/web/failback?traffic-only=1", "POST");
      assert.not.match(await lab.natRules(), /continuum:web/, "failback removed the rule");
      const before = poller.answers().length;
      await waitFor(
        () => poller.answers().slice(before).some((a) => a.ok && a.body === `local: ${MESSAGE}`),
        15_000,
        "the local service to answer again",
      );
      assert.is(await lab.serviceState(), "protected");
      const kinds = (await audit(lab)).filter((e) => e.kind === "switch").map((e) => e.toState);
      assert.ok(
        kinds.includes("failing-over") && kinds.includes("failed-over") && kinds.includes("protected"),
      );
    } finally {
      await poller.stop();
      await lab.stop();
    }
  },
);

t("a host failure (every process of the app namespace killed) moves the service too", async () => {
  if (!need("failover in namespaces", prereq)) return;
  const lab = await new FailoverLab().start();
  const poller = new Poller(lab);
  try {
    await writeMessage(lab, MESSAGE);
    await replicated(lab);
    await waitFor(
      () => poller.answers().some((a) => a.ok && a.body === `local: ${MESSAGE}`),
      20_000,
      "local answers",
    );
    lab.appService!.kill("SIGKILL");
    lab.agent.kill("SIGKILL");
    await waitFor(() => lab.serviceState().then((s) => s === "failed-over"), 30_000, "failover", 100);
    await waitFor(() => poller.outage("local", "dr1"), 15_000, "the client to be served by the remote site");
    const o = poller.outage("local", "dr1")!;
    console.log(`\n  outage seen by the client (host failure): ${o.ms} ms`);
    assert.ok(o.ms < 3000, `outage under 3 s (${o.ms} ms)`);
    const events = await audit(lab);
    assert.ok(
      events.some((e) => e.kind === "detector" && e.toState === "FAILURE"),
      "FAILURE is in the audit log",
    );

    // the host is back: its agent restarts fenced, with the service down; that service is failed,
    // not one still starting (a fenced agent has no start grace), so a failback waits for it
    await lab.startAgent();
    await waitFor(
      async () => {
        const a = await lab.appLiveness();
        return a?.state === "TRUST" && !a.serviceHealthy;
      },
      15_000,
      "the restarted agent to report its service down",
    );
    await failbackRefused(lab, "no failback to a service that is not up");
  } finally {
    await poller.stop();
    await lab.stop();
  }
});

t.run();
