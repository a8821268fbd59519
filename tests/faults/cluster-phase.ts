// The replication half of the fault runner: one topology of real processes (agent,
// local gateway, remote gateway dr1 and its standby agent) on loopback, with
//   - the agent's link to its gateway through a TCP proxy (corrupts a sealed batch),
//   - dr1's site link through a TCP proxy (cut, heal, delay with jitter, stalls, bit flips in TLS),
//   - the local gateway's data directory (journal ring, database, mirror) on a small tmpfs,
//   - dr1's replica directory on a small tmpfs,
// and the scenarios of the plan run one after another on it, each on its own region of
// the volume. Every scenario ends healed and converged, so the next starts clean.
import { Agent, type RoleProcess, sha256File, startTopology, waitFor } from "../lib/cluster.ts";
import { Proxy } from "../lib/proxy.ts";
import { exec, mustExec } from "../lib/netns.ts";
import {
  type BlockStamps,
  checkPrefix,
  type FaultAt,
  lostDurable,
  newFigures,
  Rng,
  type Scenario,
  type ScenarioFigures,
  stampsOf,
  type WriteLog,
} from "./plan.ts";
import { startWriter } from "./writer.ts";

const MiB = 1024 * 1024;
/** Blocks (4 KiB) of the region each scenario overwrites: 1 MiB. */
export const REGION_BLOCKS = 256;

type Topology = Awaited<ReturnType<typeof startTopology>>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function readRegion(path: string, startBlock: number, blocks: number): Promise<Uint8Array> {
  const f = await Deno.open(path, { read: true });
  try {
    const out = new Uint8Array(blocks * 4096);
    await f.seek(startBlock * 4096, Deno.SeekMode.Start);
    let at = 0;
    while (at < out.length) {
      const n = await f.read(out.subarray(at));
      if (n === null) break;
      at += n;
    }
    return out;
  } finally {
    f.close();
  }
}

export function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Bytes available on the filesystem holding path. */
async function avail(path: string): Promise<number> {
  const out = await mustExec(["df", "-B1", "--output=avail", path]);
  return Number(out.trim().split("\n").pop());
}

/** Fills the filesystem of dir with a ballast file until nothing is left. */
async function fill(dir: string): Promise<string> {
  const file = `${dir}/faults-ballast`;
  // the roles keep writing meanwhile: take what is free, halving the request when it no longer fits
  let want = await avail(dir);
  for (let i = 0; i < 24 && want >= 4096; i++) {
    const r = await exec(["fallocate", "-l", String(want), `${file}.${i}`]);
    want = r.code === 0 ? await avail(dir) : Math.floor(want / 2);
  }
  return file;
}

async function unfill(dir: string): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith("faults-ballast")) await Deno.remove(`${dir}/${e.name}`);
  }
}

export class ClusterPhase {
  topo!: Topology;
  agentProxy!: Proxy;
  gwDir = "";
  replicaDir = "";
  private mounts: string[] = [];
  /** processes the runner killed on purpose (their exit is not a crash) */
  private killed = new Set<RoleProcess>();
  private scenarioIndex = 0;

  constructor(private readonly nScenarios: number, private readonly say: (s: string) => void) {}

  /** The volume holds one region per scenario (plus slack). */
  get volumeSize(): number {
    return (this.nScenarios + 4) * REGION_BLOCKS * 4096;
  }

  async start(): Promise<void> {
    const size = this.volumeSize;
    this.topo = await startTopology("faults", {
      size,
      sites: ["dr1"],
      proxied: ["dr1"],
      agentTcp: true,
      gatewayExtra: ["--buffer-size", "96M", "--sync-chunk", "256K"],
      remoteExtra: ["--buffer-size", "96M"],
      prepare: async (dir) => {
        // the local gateway's whole data dir: ring (preallocated 96M), database, mirror
        this.gwDir = `${dir}/gateway`;
        this.replicaDir = `${dir}/dr1/replicas`;
        await Deno.mkdir(this.gwDir, { recursive: true, mode: 0o700 });
        await Deno.mkdir(this.replicaDir, { recursive: true, mode: 0o700 });
        await mustExec([
          "mount",
          "-t",
          "tmpfs",
          "-o",
          `size=${96 * MiB + size + 48 * MiB},mode=0700`,
          "faults-journal",
          this.gwDir,
        ]);
        this.mounts.push(this.gwDir);
        await mustExec([
          "mount",
          "-t",
          "tmpfs",
          "-o",
          `size=${size + 8 * MiB},mode=0700`,
          "faults-replica",
          this.replicaDir,
        ]);
        this.mounts.push(this.replicaDir);
      },
    });
    // the agent again, its gateway link through a proxy that can corrupt it: over TCP, as a
    // network between them would be, so sealed
    const t = this.topo;
    await this.stopRole(t.agent.proc);
    this.agentProxy = new Proxy({ hostname: "127.0.0.1", port: t.gw.agentPort });
    const agent = new Agent({ ...t.agent.o, gatewaySocket: undefined, gatewayPort: this.agentProxy.port });
    await agent.start();
    t.agent = agent;
    await waitFor(() => t.gw.status().then((s) => s.agents.includes("a1")), 20_000, "agent to connect");
    await t.caughtUp(60_000);
  }

  private async stopRole(p: RoleProcess): Promise<void> {
    this.killed.add(p);
    await p.stop();
  }

  private async kill(p: RoleProcess): Promise<void> {
    this.killed.add(p);
    p.kill("SIGKILL");
    await p.exited;
  }

  private roles(): { name: string; proc: RoleProcess; restart: () => Promise<unknown> }[] {
    const t = this.topo;
    return [
      { name: "agent", proc: t.agent.proc, restart: () => t.agent.start() },
      { name: "local-gateway", proc: t.gw.proc, restart: () => t.gw.start() },
      { name: "remote-gateway", proc: t.remotes.dr1.proc, restart: () => t.remotes.dr1.start() },
      { name: "standby", proc: t.standbys.dr1.proc, restart: () => t.standbys.dr1.start() },
    ];
  }

  private async alive(p: RoleProcess): Promise<boolean> {
    const r = await Promise.race([p.exited.then(() => false), sleep(0).then(() => true)]);
    return r;
  }

  /** Restarts roles that are down; counts those that died without being killed (crashes). */
  private async restartDead(notes: string[]): Promise<number> {
    let crashes = 0;
    for (const r of this.roles()) {
      if (await this.alive(r.proc)) continue;
      if (!this.killed.has(r.proc)) {
        crashes++;
        const tail = r.proc.log.trim().split("\n").slice(-3).join(" | ");
        notes.push(`${r.name} crashed: ${tail.slice(0, 300)}`);
      }
      await r.restart();
    }
    return crashes;
  }

  private async siteConsistent(): Promise<boolean> {
    try {
      const s = await this.topo.sites();
      return s[0]?.connected !== undefined && s[0].volumes.every((v) => v.state === "consistent");
    } catch {
      return false;
    }
  }

  /** Reads a region until two reads 150 ms apart agree (the copy is not being written). */
  private async quiet(path: string, start: number): Promise<Uint8Array | undefined> {
    let prev = await readRegion(path, start, REGION_BLOCKS);
    for (let i = 0; i < 20; i++) {
      await sleep(150);
      const cur = await readRegion(path, start, REGION_BLOCKS);
      if (same(prev, cur)) return cur;
      prev = cur;
    }
    return undefined;
  }

  async run(s: Scenario): Promise<ScenarioFigures> {
    const t = this.topo;
    const idx = this.scenarioIndex++;
    const start = (idx + 1) * REGION_BLOCKS;
    const tag = 0xfa000000 + s.id;
    const f = newFigures(s, "cluster");
    const w = startWriter({
      socket: t.agent.socket,
      exportName: "vol0",
      regionStart: start,
      regionBlocks: REGION_BLOCKS,
      tag,
      rng: new Rng(s.seed),
    });
    const t0 = performance.now();
    const checkPrefixNow = async (name: string, path: string) => {
      const bytes = await this.quiet(path, start);
      if (!bytes) {
        f.notes.push(`${name} kept changing: prefix check skipped`);
        return;
      }
      this.prefix(f, name, stampsOf(bytes, tag), w.log, "during the fault");
    };
    try {
      let first = true;
      for (const fault of s.faults) {
        const wait = fault.atMs - (performance.now() - t0);
        if (wait > 0) await sleep(wait);
        const consistent = first || await this.siteConsistent();
        await this.inject(fault, f, { first, consistent, check: checkPrefixNow });
        first = false;
      }
      await sleep(s.tailMs);
    } catch (e) {
      f.error = (e as Error).message;
    }
    f.crashes += await this.restartDead(f.notes);
    const { finalFlush } = await w.stop();
    if (!finalFlush) f.notes.push("the final FLUSH did not complete");
    f.writes = w.count();
    f.durable = w.log.durable.size;
    if (w.reconnects()) f.notes.push(`writer reconnected ${w.reconnects()}x`);
    // convergence: every copy of the region equal to the agent's volume
    const copies = t.copies();
    f.copies = Object.keys(copies).length - 1;
    const c0 = performance.now();
    let regions: Record<string, Uint8Array> = {};
    try {
      await t.caughtUp(60_000);
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
      f.convergeMs = Math.round(performance.now() - c0);
    } catch (e) {
      f.convergeMs = Math.round(performance.now() - c0);
      f.notes.push(`not converged: ${(e as Error).message}`);
      regions = {};
      for (const [k, p] of Object.entries(copies)) regions[k] = await readRegion(p, start, REGION_BLOCKS);
    }
    for (const [k, r] of Object.entries(regions)) {
      const stamps = stampsOf(r, tag);
      const lost = lostDurable(stamps, w.log);
      if (lost) f.notes.push(`${k}: ${lost} durable writes lost`);
      f.lost += lost;
      this.prefix(f, k, stamps, w.log, "after healing");
      if (k !== "lsp" && same(r, regions.lsp)) f.converged++;
    }
    f.crashes += await this.restartDead(f.notes);
    return f;
  }

  private prefix(f: ScenarioFigures, name: string, stamps: BlockStamps, log: WriteLog, when: string): void {
    f.prefixChecks++;
    const p = checkPrefix(stamps, log);
    if ("error" in p) {
      f.notPrefix++;
      f.notes.push(`${name} ${when} is not a prefix: ${p.error}`);
    }
  }

  private async inject(
    fault: FaultAt,
    f: ScenarioFigures,
    o: {
      first: boolean;
      consistent: boolean;
      check: (name: string, path: string) => Promise<void>;
    },
  ): Promise<void> {
    const t = this.topo;
    const dr1 = t.remotes.dr1;
    const copies = t.copies();
    const hold = () => sleep(fault.holdMs);
    switch (fault.kind) {
      case "kill-agent": {
        await this.kill(t.agent.proc);
        await sleep(200);
        // the agent's disk applies in sequence order; the mirror only records (no chunk resend yet)
        await o.check("lsp", copies.lsp);
        if (o.first) await o.check("lgp", copies.lgp);
        await hold();
        await t.agent.start();
        return;
      }
      case "kill-local-gateway": {
        await this.kill(t.gw.proc);
        await sleep(200);
        if (o.first) await o.check("lgp", copies.lgp);
        if (o.consistent) {
          await o.check("rgp-dr1", copies["rgp-dr1"]);
          await o.check("rsp-dr1", copies["rsp-dr1"]);
        }
        await hold();
        await t.gw.start();
        return;
      }
      case "kill-remote-gateway": {
        await this.kill(dr1.proc);
        await sleep(200);
        if (o.consistent) {
          await o.check("rgp-dr1", copies["rgp-dr1"]);
          await o.check("rsp-dr1", copies["rsp-dr1"]);
        }
        await hold();
        await dr1.start();
        return;
      }
      case "kill-standby": {
        await this.kill(t.standbys.dr1.proc);
        await sleep(200);
        if (o.consistent) await o.check("rsp-dr1", copies["rsp-dr1"]);
        await hold();
        await t.standbys.dr1.start();
        return;
      }
      case "cut": {
        t.proxies.dr1.cut();
        await sleep(Math.min(400, fault.holdMs));
        if (o.consistent) {
          await o.check("rgp-dr1", copies["rgp-dr1"]);
          await o.check("rsp-dr1", copies["rsp-dr1"]);
        }
        await sleep(Math.max(0, fault.holdMs - 400));
        t.proxies.dr1.heal();
        return;
      }
      case "delay": {
        const p = t.proxies.dr1;
        p.delayMs = fault.params.delayMs;
        p.jitterMs = fault.params.jitterMs;
        await hold();
        p.delayMs = 0;
        p.jitterMs = 0;
        return;
      }
      case "loss": {
        const p = t.proxies.dr1;
        const end = performance.now() + fault.holdMs;
        while (performance.now() < end) {
          p.cut();
          await sleep(fault.params.stallMs);
          p.heal();
          await sleep(fault.params.everyMs);
        }
        return;
      }
      case "journal-full": {
        await fill(this.gwDir);
        f.notes.push(`journal fs: ${await avail(this.gwDir)} bytes left`);
        await hold();
        await unfill(this.gwDir);
        return;
      }
      case "replica-full": {
        await fill(this.replicaDir);
        f.notes.push(`replica fs: ${await avail(this.replicaDir)} bytes left`);
        await hold();
        await unfill(this.replicaDir);
        return;
      }
      case "corrupt-site-frame": {
        const p = t.proxies.dr1;
        const before = p.corrupted;
        p.flipChunks = fault.params.count;
        await waitFor(
          () => p.corrupted >= before + fault.params.count,
          10_000,
          "bits flipped on the site link",
        )
          .catch(() =>
            f.notes.push(`site link: ${p.corrupted - before} of ${fault.params.count} flips done`)
          );
        p.flipChunks = 0;
        return;
      }
      case "corrupt-agent-frame": {
        // the link is sealed: a flipped bit fails the batch's authentication wherever it lands
        const p = this.agentProxy;
        for (let i = 0; i < fault.params.count; i++) {
          const before = p.corrupted;
          p.flipChunks = 1;
          await waitFor(() => p.corrupted > before, 10_000, "a bit flipped on the agent link")
            .catch(() => f.notes.push("agent link: nothing crossed it to corrupt"));
          p.flipChunks = 0;
          await sleep(300);
        }
        return;
      }
      default:
        throw new Error(`not a cluster fault: ${fault.kind}`);
    }
  }

  /** Whole images equal at the end (every region and everything else). */
  async finalEquality(): Promise<{ copies: number; equal: number }> {
    await this.topo.caughtUp(60_000);
    const copies = this.topo.copies();
    const lsp = await sha256File(copies.lsp);
    let equal = 0;
    for (const [k, p] of Object.entries(copies)) if (k !== "lsp" && await sha256File(p) === lsp) equal++;
    return { copies: Object.keys(copies).length - 1, equal };
  }

  async stop(): Promise<void> {
    try {
      this.agentProxy?.close();
      if (this.topo) {
        for (const r of this.roles()) this.killed.add(r.proc);
        // topo.stop() stops the agent it started; this one replaced it
        await this.topo.agent.proc.stop();
        await this.topo.stop();
      }
    } finally {
      for (const m of this.mounts.reverse()) await exec(["umount", "-l", m]);
    }
  }
}
