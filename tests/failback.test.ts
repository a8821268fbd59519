// Failback with its data, end to end in network namespaces: the service failed
// over and took writes at the remote site, whose promoted standby tracked them;
// failback freezes the remote, moves exactly the chunks written on either side since
// the promotion (no scan), starts the local service (--on-unfence) and removes the
// DNAT rule. The client sees the remote's data served locally, the outage of the
// window is measured, and replication runs forward again.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { FailoverLab, Poller, writeServiceText } from "./lib/failover-lab.ts";
import { RoleProcess, run, waitFor } from "./lib/cluster.ts";

const t = suite("failback");
const prereq = { root: true, tools: ["ip", "iptables", "iptables-save", "qemu-io"] };
const MiB = 1024 * 1024;

async function sha256(path: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

interface SiteVolume {
  ackedSeq: number;
  state: string;
}

async function forwardCaughtUp(lab: FailoverLab): Promise<void> {
  let last = "";
  await waitFor(
    async () => {
      const s = await lab.api("/api/status") as {
        volumes: { lastSeq: number }[];
        sites: { volumes: SiteVolume[] }[];
      };
      const v = s.sites[0]?.volumes[0];
      last = `volume ${JSON.stringify(s.volumes[0])}, site ${JSON.stringify(v)}`;
      return v?.state === "consistent" && v.ackedSeq === s.volumes[0].lastSeq;
    },
    60_000,
    "the remote site to hold everything",
    200,
  ).catch((e) => {
    throw new Error(`${(e as Error).message}: ${last}`);
  });
}

/** The lab with the local service started on unfence, and its two NBD sockets. */
async function startLab(sizeMiB: number) {
  // a wide detector margin: these tests are about failback, and a loaded machine must not fail over early
  const lab = await new FailoverLab().start({
    sizeMiB,
    serviceOnUnfence: true,
    gatewayExtra: ["--detector-alpha", "1s"],
  });
  return { lab, agentSock: `${lab.dir}/agent/nbd.sock`, standbySock: `${lab.dir}/standby/nbd.sock` };
}

t(
  "failback brings the remote's writes home, switches back within seconds, and replicates forward again",
  async () => {
    if (!need("failback in namespaces", prereq)) return;
    const { lab, agentSock, standbySock } = await startLab(256);
    const poller = new Poller(lab);
    try {
      await writeServiceText(agentSock, "written before the failure");
      await run("qemu-io", [
        "-f",
        "raw",
        `nbd+unix:///vol0?socket=${agentSock}`,
        "-c",
        "write -P 0x11 8M 64M",
      ]);
      await forwardCaughtUp(lab);

      await lab.appService!.stop();
      await waitFor(() => lab.serviceState().then((s) => s === "failed-over"), 30_000, "failover", 100);
      assert.match(lab.standby.log, /"copiesEqual":true/, "the standby was level with the replica");
      assert.not.match(lab.standby.log, /full synchronisation/, "so its promoted volume resent nothing");
      await new Promise((r) => setTimeout(r, 1000));
      assert.not.match(lab.agent.log, /writes are refused/, "the fenced old primary sends nothing");
      // the service runs at dr1 and writes there: new text, and 16 MiB of new data
      await writeServiceText(standbySock, "written at dr1 during the failover");
      await run("qemu-io", [
        "-f",
        "raw",
        `nbd+unix:///vol0?socket=${standbySock}`,
        "-c",
        "write -P 0x22 100M 16M",
      ]);
      await waitFor(
        () => poller.answers().some((a) => a.ok && a.body === "dr1: written at dr1 during the failover"),
        20_000,
        "the remote service to answer with its own write",
      );

      // the client is served by dr1 when failback starts (with no online pass the remote may stop
      // within a poll or two of the request, so make sure an answer from dr1 comes after this point)
      const started = Date.now();
      await waitFor(
        () => poller.answers().some((a) => a.t >= started && a.ok && a.body.startsWith("dr1:")),
        10_000,
        "the client to be served by dr1",
        20,
      );
      const { status, body } = await lab.failback();
      assert.is(status, 200, JSON.stringify(body));
      const report = body.report!;
      console.log(
        `\n  online pass moved ${(report.onlineBytes / MiB).toFixed(1)} MiB, final pass ${
          (report.finalBytes / MiB).toFixed(1)
        } MiB, switch window ${report.windowMs} ms`,
      );
      // the promoted standby tracked what it wrote: no online scan, the window moves the union
      assert.is(report.onlineBytes, 0, "no online pass: the divergence is tracked");
      const rec =
        (await lab.api("/api/recoveries") as { method: string; methodReason: string; bytesMoved: number }[])
          .at(-1)!;
      assert.is(rec.method, "tracked", rec.methodReason);
      // dr1 wrote the service text (chunk 0) and 16 MiB at 100 MiB (chunks 100..115)
      assert.match(rec.methodReason, /\b17 from dr1's writes since the last promotion/);
      const union = Number(/tracked: (\d+) chunks/.exec(rec.methodReason)?.[1]);
      assert.is(report.finalBytes, union * MiB, `the window moved exactly the union (${rec.methodReason})`);
      assert.not.match(await lab.natRules(), /continuum:web/, "the rule is gone");
      const svc = (await lab.api("/api/services") as { name: string; state: string; fenced: string | null }[])
        .find((s) => s.name === "web")!;
      assert.is(svc.state, "protected");
      assert.is(svc.fenced, null, "the local server takes writes again");

      await waitFor(
        () => poller.outage("dr1", "local", started),
        15_000,
        "the client to be served locally",
      );
      const o = poller.outage("dr1", "local", started)!;
      console.log(`  outage seen by the client (failback): ${o.ms} ms`);
      assert.ok(o.ms < 5000, `outage under 5 s (${o.ms} ms)`);
      const first = poller.answers().find((a) => a.t >= o.firstTo && a.body.startsWith("local:"))!;
      assert.is(
        first.body,
        "local: written at dr1 during the failover",
        "the local service has the remote's data",
      );

      // forward replication: the standby is a standby again and receives local writes
      await forwardCaughtUp(lab);
      assert.is(await sha256(lab.lsp), await sha256(lab.rsp), "volume and standby are equal");
      await writeServiceText(agentSock, "written after the failback");
      await forwardCaughtUp(lab);
      await waitFor(
        async () => {
          const b = await Deno.readFile(lab.rsp).then((d) => d.subarray(0, 26));
          return new TextDecoder().decode(b) === "written after the failback";
        },
        30_000,
        "the standby to receive the new write",
      );
      const kinds = (await lab.api("/api/audit?limit=1000") as { kind: string; toState: string }[])
        .filter((e) => e.kind === "failback").map((e) => e.toState);
      assert.ok(kinds.includes("online-copy") && kinds.includes("done"), "failback is in the audit log");
    } finally {
      await poller.stop();
      await lab.stop();
    }
  },
);

t(
  "a promoted standby that restarted comes back promoted and can be demoted: failback completes",
  async () => {
    if (!need("failback in namespaces", prereq)) return;
    const { lab, agentSock, standbySock } = await startLab(32);
    try {
      await writeServiceText(agentSock, "written before the failure");
      await forwardCaughtUp(lab);
      await lab.appService!.stop();
      await waitFor(() => lab.serviceState().then((s) => s === "failed-over"), 30_000, "failover", 100);
      await writeServiceText(standbySock, "written at dr1 before its agent restarted");

      // the promoted standby's agent dies and starts again with the same flags (--standby)
      const old = lab.standby;
      old.kill();
      await old.exited;
      lab.standby = new RoleProcess(old.name, old.args, old.logPath, old.opts);
      const ready = await lab.standby.waitForLog("agent ready");
      assert.is(ready.promoted, true, "it knows it is promoted (its role is persisted)");
      await writeServiceText(standbySock, "written at dr1 after its agent restarted");

      const t0 = performance.now();
      const { status, body } = await lab.failback();
      assert.is(status, 200, JSON.stringify(body));
      console.log(`\n  failback after the standby's restart: ${Math.round(performance.now() - t0)} ms`);
      assert.match(lab.standby.log, /demoted: standby again/, "the restarted standby took the demotion");
      assert.not.match(lab.standby.log, /control message refused/, "and refused no order");
      const head = await Deno.readFile(lab.lsp).then((d) => new TextDecoder().decode(d.subarray(0, 40)));
      assert.is(head, "written at dr1 after its agent restarted", "the local volume has dr1's last write");
    } finally {
      await lab.stop();
    }
  },
);

t.run();
