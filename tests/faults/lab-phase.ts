// The detector half of the fault runner, in the failover lab (network namespaces:
// client, gw, app, remote; the service's DNAT on gw). Heartbeats go through a UDP
// relay that impairs them like netem (udp-netem.ts). Faults below the detector's
// margin (impaired heartbeats, a cut of the site link with iptables, kill -9 of the
// remote or the local gateway) must switch nothing; a real host failure must switch
// the service; in every case the DNAT rules must be exactly what the recorded state
// calls for, also after the local gateway is killed and restarted. The agent and both
// gateways run under libfaketime, so the wall clock of one of them can step forward or
// back (and return) while everything runs: that is below the margin too.
import { type ClockRole, FailoverLab } from "../lib/failover-lab.ts";
import { faketimeLoaded, setClockOffset } from "../lib/faketime.ts";
import { RoleProcess, waitFor } from "../lib/cluster.ts";
import { exec, inNs, mustExec } from "../lib/netns.ts";
import {
  checkPrefix,
  lostDurable,
  newFigures,
  Rng,
  type Scenario,
  type ScenarioFigures,
  stampsOf,
} from "./plan.ts";
import { startWriter } from "./writer.ts";
import { readRegion, REGION_BLOCKS, same } from "./cluster-phase.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const here = new URL("./", import.meta.url).pathname;

interface Status {
  volumes: { lastSeq: number }[];
  sites: { connected: boolean; volumes: { ackedSeq: number; state: string }[] }[];
}

export class LabPhase {
  lab = new FailoverLab();
  private control = "";
  private index = 0;

  constructor(private readonly say: (s: string) => void, private readonly writeRate = 0) {}

  async start(): Promise<void> {
    this.control = `/tmp/continuum-faults-netem-${Deno.pid}.json`;
    await Deno.writeTextFile(this.control, JSON.stringify({ delayMs: 0, jitterMs: 0, lossPct: 0 }));
    await this.lab.start({
      sizeMiB: 48,
      faketime: true,
      jitter: { meanMs: 0, spreadMs: 0, script: `${here}udp-netem.ts`, control: this.control },
    });
    await this.replicated(60_000);
  }

  private async status(): Promise<Status> {
    return await this.lab.api("/api/status") as Status;
  }

  private async replicated(timeoutMs: number): Promise<void> {
    await waitFor(
      async () => {
        const s = await this.status();
        const v = s.volumes[0];
        return v && s.sites[0]?.connected && s.sites[0].volumes[0]?.state === "consistent" &&
          s.sites[0].volumes[0].ackedSeq === v.lastSeq;
      },
      timeoutMs,
      "the remote site to hold everything",
      200,
    );
  }

  private async switches(): Promise<number> {
    const a = await this.lab.api("/api/audit?limit=1000") as { kind: string; toState: string }[];
    return a.filter((e) => e.kind === "switch" && e.toState === "failing-over").length;
  }

  /** Continuum's DNAT rules against the recorded service state: how many are stale or missing. */
  private async dnatBad(notes: string[], when: string): Promise<number> {
    const state = await this.lab.serviceState();
    const nat = await this.lab.natRules();
    const ours = nat.split("\n").filter((l) => l.startsWith("-A CONTINUUM-PRE") && l.includes("DNAT"));
    const web = ours.filter((l) => l.includes("continuum:web") && l.includes("10.77.3.2:8080"));
    const want = state === "failed-over" ? 1 : 0;
    const jumps = (nat.match(/-j CONTINUUM-PRE/g) ?? []).length;
    const bad = Math.abs(web.length - want) + (ours.length - web.length) + (jumps === 2 ? 0 : 1);
    if (bad) {
      notes.push(`DNAT ${when}: state ${state}, rules ${JSON.stringify(ours)}, jumps ${jumps}\n${nat}`);
    }
    return bad;
  }

  private async restartRemote(): Promise<void> {
    const old = this.lab.remote;
    this.lab.remote = new RoleProcess(old.name, old.args, old.logPath, old.opts);
    await this.lab.remote.waitForLog("remote gateway ready");
  }

  async run(s: Scenario): Promise<ScenarioFigures> {
    const lab = this.lab;
    const fault = s.faults[0];
    const f = newFigures(s, "lab");
    const switchesBefore = await this.switches();
    if (fault.kind === "host-failure") {
      // every process of the app host stops: the detector must switch, within its bound
      const t0 = performance.now();
      lab.appService?.kill("SIGKILL");
      lab.agent.kill("SIGKILL");
      try {
        await waitFor(() => lab.serviceState().then((x) => x === "failed-over"), 30_000, "failover", 100);
        f.failovers = 1;
        f.notes.push(`failed over ${Math.round(performance.now() - t0)} ms after the host failure`);
      } catch (e) {
        f.error = (e as Error).message;
      }
      f.dnatBad += await this.dnatBad(f.notes, "after the switch");
      // a crash of the local gateway after the switch: the rule must be reconciled, not lost or doubled
      lab.gateway.kill("SIGKILL");
      await lab.gateway.exited;
      await lab.startGateway();
      await sleep(500);
      f.dnatBad += await this.dnatBad(f.notes, "after a restart of the local gateway");
      return f;
    }

    const idx = this.index++;
    const start = (idx + 1) * REGION_BLOCKS; // block 0 is the service's
    const tag = 0xfb000000 + s.id;
    const w = startWriter({
      socket: `${lab.dir}/agent/nbd.sock`,
      exportName: "vol0",
      regionStart: start,
      regionBlocks: REGION_BLOCKS,
      tag,
      rng: new Rng(s.seed),
      ratePerSec: this.writeRate,
    });
    // the service's state, sampled through the fault: it must stay "protected"
    let sampling = true;
    const states = new Set<string>();
    const sampler = (async () => {
      while (sampling) {
        try {
          states.add(await lab.serviceState());
        } catch { /* the gateway is down: nothing to sample */ }
        await sleep(100);
      }
    })();
    try {
      await sleep(fault.atMs);
      switch (fault.kind) {
        case "hb-impair":
          await Deno.writeTextFile(this.control, JSON.stringify({ ...fault.params, maxLossRun: 1 }));
          await sleep(fault.holdMs);
          await Deno.writeTextFile(this.control, JSON.stringify({ delayMs: 0, jitterMs: 0, lossPct: 0 }));
          break;
        case "lab-cut": {
          const rules = [["OUTPUT", "-d"], ["INPUT", "-s"]];
          for (const [chain, dir] of rules) {
            await mustExec(inNs(lab.ns.gw, ["iptables", "-I", chain, dir, "10.77.3.2", "-j", "DROP"]));
          }
          await sleep(fault.holdMs);
          for (const [chain, dir] of rules) {
            await mustExec(inNs(lab.ns.gw, ["iptables", "-D", chain, dir, "10.77.3.2", "-j", "DROP"]));
          }
          break;
        }
        case "lab-kill-remote-gateway":
          lab.remote.kill("SIGKILL");
          await lab.remote.exited;
          await sleep(fault.holdMs);
          await this.restartRemote();
          break;
        case "lab-kill-local-gateway":
          lab.gateway.kill("SIGKILL");
          await lab.gateway.exited;
          await sleep(fault.holdMs);
          await lab.startGateway();
          break;
        case "clock-jump-agent":
        case "clock-jump-local-gateway":
        case "clock-jump-remote-gateway": {
          const role = fault.kind.slice("clock-jump-".length) as ClockRole;
          const proc =
            { "agent": lab.agent, "local-gateway": lab.gateway, "remote-gateway": lab.remote }[role];
          if (!await faketimeLoaded(proc.pid)) throw new Error(`libfaketime is not loaded in the ${role}`);
          const idle = "no answer from the remote site: reconnecting";
          const drops = () => lab.gateway.records().filter((x) => x.msg === idle).length;
          const before = drops();
          await setClockOffset(lab.clockFile(role), fault.params.offsetS);
          await sleep(fault.holdMs);
          await setClockOffset(lab.clockFile(role), 0);
          await sleep(2500); // the step back takes within a second, an idle check runs every second
          // not an invariant of the issue, but a step must not end a live link as idle
          if (drops() > before) f.notes.push(`the site link was dropped as idle ${drops() - before}x`);
          break;
        }
        default:
          throw new Error(`not a lab fault: ${fault.kind}`);
      }
      await sleep(s.tailMs);
    } catch (e) {
      f.error = (e as Error).message;
    }
    const { finalFlush } = await w.stop();
    if (!finalFlush) f.notes.push("the final FLUSH did not complete");
    f.writes = w.count();
    f.durable = w.log.durable.size;
    const copies: Record<string, string> = {
      lsp: lab.lsp,
      lgp: `${lab.dir}/gateway/mirrors/app1/vol0.img`,
      rgp: `${lab.dir}/remote/replicas/app1/vol0.img`,
      rsp: lab.rsp,
    };
    f.copies = 3;
    const c0 = performance.now();
    let regions: Record<string, Uint8Array> = {};
    try {
      await this.replicated(60_000);
      await waitFor(
        async () => {
          regions = {};
          for (const [k, p] of Object.entries(copies)) regions[k] = await readRegion(p, start, REGION_BLOCKS);
          return Object.values(regions).every((r) => same(r, regions.lsp));
        },
        30_000,
        "every copy of the region to equal the agent's volume",
        200,
      );
    } catch (e) {
      f.notes.push(`not converged: ${(e as Error).message}`);
      regions = {};
      for (const [k, p] of Object.entries(copies)) regions[k] = await readRegion(p, start, REGION_BLOCKS);
    }
    f.convergeMs = Math.round(performance.now() - c0);
    sampling = false;
    await sampler;
    for (const [k, r] of Object.entries(regions)) {
      const stamps = stampsOf(r, tag);
      const lost = lostDurable(stamps, w.log);
      if (lost) f.notes.push(`${k}: ${lost} durable writes lost`);
      f.lost += lost;
      f.prefixChecks++;
      const p = checkPrefix(stamps, w.log);
      if ("error" in p) {
        f.notPrefix++;
        f.notes.push(`${k} is not a prefix: ${p.error}`);
      }
      if (k !== "lsp" && same(r, regions.lsp)) f.converged++;
    }
    f.falseFailovers = await this.switches() - switchesBefore;
    const seen = [...states].filter((x) => x !== "protected");
    if (seen.length) {
      f.notes.push(`service states seen: ${[...states].join(", ")}`);
      if (f.falseFailovers === 0) f.falseFailovers = 1;
    }
    f.dnatBad = await this.dnatBad(f.notes, "after healing");
    for (
      const [name, p] of [["agent", lab.agent], ["remote", lab.remote], ["standby", lab.standby]] as const
    ) {
      const dead = await Promise.race([p.exited.then(() => true), sleep(0).then(() => false)]);
      if (dead) {
        f.crashes++;
        f.notes.push(`${name} died: ${p.log.trim().split("\n").slice(-2).join(" | ").slice(0, 300)}`);
      }
    }
    return f;
  }

  async stop(): Promise<void> {
    await this.lab.stop();
    await exec(["rm", "-f", this.control]);
  }
}
