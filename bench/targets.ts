// The Continuum targets of the write benchmarks, started as a user runs them: the agent and its
// local gateway alone, and the demo's topology with two remote sites.
import { startPair, startTopology, waitMirrorCaughtUp } from "../tests/lib/cluster.ts";

const GiB = 1024 ** 3;

export interface Running {
  uri: string;
  /** Processes whose CPU is accounted. */
  pids: number[];
  /** The highest replication lag of any site now, in seconds (Continuum with sites only). */
  lag?: () => Promise<number>;
  /** Waits until every copy holds what was written (Continuum only: the peers' copies are synchronous). */
  settled?: () => Promise<void>;
  /** The flushes the second copy received, once stopped (the qemu mirror's target). */
  targetFlushes?: () => Promise<number>;
  stop(): Promise<void>;
}

/** The gateways' journal rings as a user gets them: the test library's only reserve theirs. */
export const AS_SHIPPED = ["--buffer-init", "zeroes"];

export type Topology = Awaited<ReturnType<typeof startTopology>>;

/** The demo's topology: the agent, the local gateway and two remote sites with their standbys. */
export async function twoSites(gatewayExtra: string[]): Promise<Running & { topology: Topology }> {
  const t = await startTopology("bench-sites", {
    size: GiB,
    sites: ["s1", "s2"],
    gatewayExtra: [...AS_SHIPPED, ...gatewayExtra],
    remoteExtra: AS_SHIPPED,
  });
  await t.agent.proc.waitForLog("every chunk that may differ was resent", 120_000);
  await t.caughtUp();
  return {
    uri: t.agent.uri("vol0"),
    pids: [
      t.agent.proc.pid,
      t.gw.proc.pid,
      ...Object.values(t.remotes).map((r) => r.proc.pid),
      ...Object.values(t.standbys).map((s) => s.proc.pid),
    ],
    lag: async () => Math.max(0, ...(await t.sites()).map((s) => s.lagSeconds ?? 0)),
    settled: () => t.caughtUp(),
    topology: t,
    stop: async () => {
      await t.stop();
      await Deno.remove(t.dir, { recursive: true });
    },
  };
}

/**
 * The agent and its local gateway alone, the agent's link over a Unix socket (in clear) or TCP
 * (sealed); `ring` puts the gateway's journal ring elsewhere than its data directory.
 */
export async function pairOnly(link: "unix" | "tcp", ring?: string): Promise<Running> {
  const gatewayExtra = [...AS_SHIPPED, ...(ring ? ["--buffer", ring] : [])];
  const pair = await startPair("bench", { vol0: GiB }, [], undefined, gatewayExtra, link);
  // measured in steady state: after the new volume's first full synchronisation
  await pair.agent.proc.waitForLog("every chunk that may differ was resent", 120_000);
  const settled = () => waitMirrorCaughtUp(pair.gw, "a1", "vol0", 120_000);
  await settled();
  return {
    uri: pair.agent.uri("vol0"),
    pids: [pair.agent.proc.pid, pair.gw.proc.pid],
    settled,
    // each run's files go with it: three rounds of every job would otherwise fill the disk
    stop: async () => {
      await pair.stop();
      await Deno.remove(pair.dir, { recursive: true });
      if (ring) await Deno.remove(ring);
    },
  };
}

/**
 * Samples a target's replication lag every 250 ms (a target without sites: nothing); `done`
 * stops and gives the samples taken.
 */
export function sampleLag(s: Running): { done(): Promise<number[] | undefined> } {
  const lags: number[] = [];
  let sampling = true;
  const sampler = s.lag
    ? (async () => {
      while (sampling) {
        lags.push(await s.lag!().catch(() => NaN));
        await new Promise((r) => setTimeout(r, 250));
      }
    })()
    : undefined;
  return {
    async done() {
      sampling = false;
      await sampler;
      return s.lag ? lags.filter((x) => !Number.isNaN(x)) : undefined;
    },
  };
}
