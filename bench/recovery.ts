// Recovery benchmark: `deno task bench recovery`. A 1 GiB volume full of random
// data; each round 1% of its 1 MiB chunks are changed on the local disk (agent
// stopped) and the same damage is repaired from the gateway's mirror: Continuum's
// blind fast recovery (a scan: both ends hashed at once, the differing chunks moving
// while it goes on), Continuum's tracked recovery (the changed chunks known, as a
// promoted standby or the agent's dirty map knows them: no scan), and
// `rsync --inplace --no-whole-file` between the two files. Then a full recovery to a
// blank disk against `nbdcopy --flush` from an nbdkit export of the mirror. Page
// caches are dropped before each run. Last, a 256 MiB mirror rebuilt from one site
// and from two sites at once, each behind a 50 MB/s link. Also the native chunk-hash
// scan rate, cold and warm.
import { machine, median, writeSection } from "./lib.ts";
import { recoveryClient } from "./recoveries.ts";
import { run, startTopology } from "../tests/lib/cluster.ts";
import * as native from "../src/native/mod.ts";
import { closeSync, openSync } from "node:fs";

const MiB = 1024 * 1024, SIZE = 1024 * MiB, ROUNDS = 3;
const MULTI_SIZE = 256 * MiB, LINK_BPS = 50e6;

async function dropCaches(): Promise<void> {
  await run("sync", []);
  await Deno.writeTextFile("/proc/sys/vm/drop_caches", "3").catch(() => {});
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  await dropCaches();
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

/** The chunks damaged: every 100th 1 MiB chunk from the 7th (1% of them). */
function damagedChunks(size: number): number[] {
  const out: number[] = [];
  for (let c = 7; c < size / MiB; c += 100) out.push(c);
  return out;
}

/** Overwrites 64 KiB at the start of each damaged chunk. */
async function damage(path: string): Promise<number> {
  const f = await Deno.open(path, { write: true });
  const chunks = damagedChunks(SIZE);
  for (const c of chunks) {
    await f.seek(c * MiB, Deno.SeekMode.Start);
    await f.write(crypto.getRandomValues(new Uint8Array(65536)));
  }
  f.close();
  return chunks.length;
}

/**
 * Marks the damaged chunks in the stopped agent's dirty map (a 64-byte header, then a bit
 * per 1 MiB chunk) and fences it, as a crash or a promotion leaves them: the system knows
 * what changed, and the fenced agent resends nothing before the recovery.
 */
async function track(agentHome: string): Promise<void> {
  const path = `${agentHome}/vol0.dirty`;
  const map = await Deno.readFile(path);
  for (const c of damagedChunks(SIZE)) map[64 + (c >> 3)] |= 1 << (c & 7);
  await Deno.writeFile(path, map);
  const statePath = `${agentHome}/agent-state.json`;
  const state = JSON.parse(await Deno.readTextFile(statePath).catch(() => "{}"));
  state.fenced = { reason: "bench: damaged while stopped", since: Date.now() };
  await Deno.writeTextFile(statePath, JSON.stringify(state));
}

async function scanRate(path: string, warm: boolean): Promise<number> {
  const fd = openSync(path, "r");
  try {
    if (!warm) await dropCaches();
    else await Deno.readFile(path); // pulls the file into the page cache
    const t0 = performance.now();
    await native.hashRange(fd, 0, SIZE, MiB);
    return SIZE / 1e9 / ((performance.now() - t0) / 1000);
  } finally {
    closeSync(fd);
  }
}

const rows: {
  scan: number;
  tracked: number;
  rsync: number;
  full: number;
  nbdcopy: number;
  scanMoved: number;
  trackedMoved: number;
}[] = [];
let scanCold = 0, scanWarm = 0;
const topo = await startTopology("bench-recovery", { size: SIZE, sites: [] });
try {
  const recover = recoveryClient(topo);
  const random = `${topo.dir}/random.img`;
  await run("sh", ["-c", `head -c ${SIZE} /dev/urandom > ${random}`]);
  await run("nbdcopy", [random, topo.agent.uri("vol0")]);
  await topo.caughtUp(300_000);
  const lgp = topo.copies().lgp;
  scanCold = await scanRate(lgp, false);
  scanWarm = await scanRate(lgp, true);
  for (let round = 0; round < ROUNDS; round++) {
    // blind: the system does not know what changed, so it scans
    await topo.agent.proc.stop();
    const chunks = await damage(topo.lsp);
    await run("cp", ["--sparse=always", topo.lsp, `${topo.dir}/rsync.img`]);
    await topo.agent.start();
    let scanMoved = 0, trackedMoved = 0;
    const scan = await timed(async () => {
      const r = await recover({ volume: "a1/vol0", mode: "manual", source: "lgp", method: "scan" });
      scanMoved = r.bytesMoved;
    });
    // tracked: the same damage, known to the system
    await topo.agent.proc.stop();
    await damage(topo.lsp);
    await track(topo.agent.home);
    await topo.agent.start();
    const tracked = await timed(async () => {
      const r = await recover({ volume: "a1/vol0", mode: "manual", source: "lgp", method: "tracked" });
      if (r.method !== "tracked") throw new Error(`the recovery did not track: ${r.methodReason}`);
      trackedMoved = r.bytesMoved;
    });
    const rsync = await timed(() =>
      run("rsync", ["--inplace", "--no-whole-file", lgp, `${topo.dir}/rsync.img`])
    );
    // a blank disk: every chunk moves. The two take turns at running first, so that neither always
    // runs in the wake of the other's gigabyte (writeback, the host's caches)
    await topo.agent.proc.stop();
    await Deno.truncate(topo.lsp, 0);
    await Deno.truncate(topo.lsp, SIZE);
    await topo.agent.start();
    await Deno.remove(`${topo.dir}/nbdcopy.img`).catch(() => {});
    await run("truncate", ["-s", String(SIZE), `${topo.dir}/nbdcopy.img`]);
    const fullRun = () =>
      timed(() => recover({ volume: "a1/vol0", mode: "manual", source: "lgp", strategy: "full" }));
    const nbdcopyRun = () =>
      timed(() =>
        run("nbdcopy", [
          "--flush",
          "--",
          "[",
          "nbdkit",
          "--readonly",
          "file",
          lgp,
          "]",
          `${topo.dir}/nbdcopy.img`,
        ])
      );
    let full: number, nbdcopy: number;
    if (round % 2 === 0) {
      full = await fullRun();
      nbdcopy = await nbdcopyRun();
    } else {
      nbdcopy = await nbdcopyRun();
      full = await fullRun();
    }
    console.log(
      `round ${round + 1}: ${chunks} chunks changed; scan ${scan.toFixed(2)} s (moved ${
        (scanMoved / MiB).toFixed(1)
      } MiB), tracked ${tracked.toFixed(2)} s (moved ${(trackedMoved / MiB).toFixed(1)} MiB), rsync ${
        rsync.toFixed(2)
      } s; full ${full.toFixed(2)} s, nbdcopy --flush ${nbdcopy.toFixed(2)} s (${
        round % 2 === 0 ? "full" : "nbdcopy"
      } first)`,
    );
    rows.push({ scan, tracked, rsync, full, nbdcopy, scanMoved, trackedMoved });
  }
} finally {
  await topo.stop();
  await Deno.remove(topo.dir, { recursive: true }); // several GiB: leave the disk to the next run
}

// several sources: the mirror rebuilt in full from one site, then from two at once
const multi: { one: number; two: number }[] = [];
const mt = await startTopology("bench-recovery-multi", {
  size: MULTI_SIZE,
  sites: ["dr1", "dr2"],
  proxied: ["dr1", "dr2"],
});
try {
  const recover = recoveryClient(mt);
  const random = `${mt.dir}/random.img`;
  await run("sh", ["-c", `head -c ${MULTI_SIZE} /dev/urandom > ${random}`]);
  await run("nbdcopy", [random, mt.agent.uri("vol0")]);
  for (let round = 0; round < ROUNDS; round++) {
    for (const p of Object.values(mt.proxies)) p.rateBps = 0;
    await mt.caughtUp(300_000);
    for (const p of Object.values(mt.proxies)) p.rateBps = LINK_BPS;
    const base = { volume: "a1/vol0", mode: "manual", source: "rgp@dr1", strategy: "full", target: "lgp" };
    const one = await timed(() => recover(base));
    for (const p of Object.values(mt.proxies)) p.rateBps = 0;
    await mt.caughtUp(300_000);
    for (const p of Object.values(mt.proxies)) p.rateBps = LINK_BPS;
    const two = await timed(() => recover({ ...base, also: ["rgp@dr2"] }));
    console.log(
      `round ${round + 1}: ${MULTI_SIZE / MiB} MiB from one site ${one.toFixed(2)} s, from two ${
        two.toFixed(2)
      } s`,
    );
    multi.push({ one, two });
  }
} finally {
  await mt.stop();
  await Deno.remove(mt.dir, { recursive: true });
}

const m = (k: keyof (typeof rows)[0]) => median(rows.map((r) => r[k]));
const scan = m("scan"), tracked = m("tracked"), rs = m("rsync"), full = m("full"), nc = m("nbdcopy");
const one = median(multi.map((r) => r.one)), two = median(multi.map((r) => r.two));
const x = (a: number, b: number) => (a / b).toFixed(2);
const table = [
  "| method (1 GiB of random data, caches dropped) | seconds (median) | peer ÷ Continuum | target |",
  "| --- | --- | --- | --- |",
  `| 1% of 1 MiB chunks changed: Continuum tracked recovery from the mirror (moved ${
    (m("trackedMoved") / MiB).toFixed(1)
  } MiB, no scan) | ${tracked.toFixed(2)} | rsync ${x(rs, tracked)}× | ≥ 10× |`,
  `| 1% changed: Continuum blind fast recovery, overlapped scan (moved ${
    (m("scanMoved") / MiB).toFixed(1)
  } MiB) | ${scan.toFixed(2)} | rsync ${x(rs, scan)}× | ≥ 2.5× |`,
  `| 1% changed: rsync --inplace --no-whole-file | ${rs.toFixed(2)} | | |`,
  `| blank disk: Continuum full recovery from the mirror | ${full.toFixed(2)} | nbdcopy ${
    x(nc, full)
  }× | ≥ 0.8× |`,
  `| blank disk: nbdcopy --flush from nbdkit | ${nc.toFixed(2)} | | |`,
  `| ${MULTI_SIZE / MiB} MiB mirror rebuilt from one site behind ${LINK_BPS / 1e6} MB/s | ${
    one.toFixed(2)
  } | | |`,
  `| the same from two sites at once, each behind ${LINK_BPS / 1e6} MB/s | ${two.toFixed(2)} | one site ${
    x(one, two)
  }× | ≥ 1.7× |`,
].join("\n");
console.log(
  `\n${table}\n\nchunk-hash scan (XXH3-128, 1 MiB chunks): ${scanCold.toFixed(2)} GB/s cold, ${
    scanWarm.toFixed(2)
  } GB/s warm`,
);
await writeSection(
  "recovery",
  `## Recovery (\`deno task bench recovery\`)

${await machine()}. ${ROUNDS} rounds, medians; page caches dropped before each run. Each round overwrites
64 KiB in 1% of the 1 MiB chunks of the local volume (agent stopped) and repairs the damage from the
gateway's mirror, first blind (a scan: both ends hash at once and stream their hashes, differing chunks move
while the scan goes on, only the moved chunks are hashed again), then with the same damage known to the
system (marked in the agent's dirty map, as a crash or a promoted standby leaves it: no scan; the moved
chunks and an audit sample of 32 others are verified). A blank local disk is then rebuilt in full (it and nbdcopy take turns at running first). Times are
from the API request to the verified end, through the agent as in production. The two-site rows rebuild the
mirror through two remote gateways whose links go through a ${LINK_BPS / 1e6} MB/s test proxy each.

${table}

Chunk-hash scan rate of the native library (XXH3-128 over 1 MiB chunks of a 1 GiB file): ${
    scanCold.toFixed(2)
  } GB/s from disk (cache dropped), ${scanWarm.toFixed(2)} GB/s from the page cache.

Targets from the recovery-speed issue (17): tracked ≥ 10× rsync, blind ≥ 2.5× rsync, full ≥ 0.8× nbdcopy, two
sources ≥ 1.7× one.`,
);
