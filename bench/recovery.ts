// Recovery benchmark: `deno task bench recovery`. A 1 GiB volume full of random
// data, 1% of its 1 MiB chunks changed on the local disk; then, each round, the
// same damaged file is repaired three ways from the gateway's mirror: Continuum's
// fast recovery (through the agent and the gateway, as in production),
// `rsync --inplace --no-whole-file` between the two files, and a full `nbdcopy`
// from an nbdkit export of the mirror. Page caches are dropped before each run.
// Also the native chunk-hash scan rate, cold and warm.
import { machine, median, writeSection } from "./lib.ts";
import { run, startTopology, waitFor } from "../tests/lib/cluster.ts";
import * as native from "../src/native/mod.ts";
import { closeSync, openSync } from "node:fs";

const MiB = 1024 * 1024, SIZE = 1024 * MiB, ROUNDS = 3;

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

/** Overwrites 64 KiB at the start of every 100th 1 MiB chunk (1% of the chunks). */
async function damage(path: string): Promise<number> {
  const f = await Deno.open(path, { write: true });
  let n = 0;
  for (let c = 7; c < SIZE / MiB; c += 100, n++) {
    await f.seek(c * MiB, Deno.SeekMode.Start);
    await f.write(crypto.getRandomValues(new Uint8Array(65536)));
  }
  f.close();
  return n;
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

const topo = await startTopology("bench-recovery", { size: SIZE, sites: [] });
const api = (path: string, init?: RequestInit) =>
  fetch(`http://127.0.0.1:${topo.gw.httpPort}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${topo.gw.token}`, "content-type": "application/json" },
  }).then((r) => r.json());
const rows: { continuum: number; rsync: number; nbdcopy: number; moved: number }[] = [];
let scanCold = 0, scanWarm = 0;
try {
  const random = `${topo.dir}/random.img`;
  await run("sh", ["-c", `head -c ${SIZE} /dev/urandom > ${random}`]);
  await run("nbdcopy", [random, topo.agent.uri("vol0")]);
  await topo.caughtUp(300_000);
  const lgp = topo.copies().lgp;
  scanCold = await scanRate(lgp, false);
  scanWarm = await scanRate(lgp, true);
  for (let round = 0; round < ROUNDS; round++) {
    await topo.agent.proc.stop();
    const chunks = await damage(topo.lsp);
    for (const peer of ["rsync", "nbdcopy"]) {
      await run("cp", ["--sparse=always", topo.lsp, `${topo.dir}/${peer}.img`]);
    }
    await topo.agent.start();
    let moved = 0;
    const continuum = await timed(async () => {
      const { id } = await api("/api/recoveries", {
        method: "POST",
        body: JSON.stringify({ volume: "a1/vol0", mode: "manual", source: "lgp", strategy: "fast" }),
      });
      const r = await waitFor(
        async () => {
          const me = (await api("/api/recoveries") as { id: number; status: string; bytesMoved: number }[])
            .find((x) => x.id === id)!;
          if (me.status === "failed") throw new Error("recovery failed");
          return me.status === "done" ? me : undefined;
        },
        300_000,
        "the recovery",
        20,
      );
      moved = r.bytesMoved;
    });
    const rsync = await timed(() =>
      run("rsync", ["--inplace", "--no-whole-file", lgp, `${topo.dir}/rsync.img`])
    );
    const nbdcopy = await timed(() =>
      run("nbdcopy", ["--", "[", "nbdkit", "--readonly", "file", lgp, "]", `${topo.dir}/nbdcopy.img`])
    );
    console.log(
      `round ${round + 1}: ${chunks} chunks changed; Continuum ${continuum.toFixed(2)} s (moved ${
        (moved / MiB).toFixed(1)
      } MiB), rsync ${rsync.toFixed(2)} s, nbdcopy ${nbdcopy.toFixed(2)} s`,
    );
    rows.push({ continuum, rsync, nbdcopy, moved });
  }
} finally {
  await topo.stop();
}

const c = median(rows.map((r) => r.continuum));
const rs = median(rows.map((r) => r.rsync));
const nc = median(rows.map((r) => r.nbdcopy));
const moved = median(rows.map((r) => r.moved));
const table = [
  "| method (1 GiB, 1% of 1 MiB chunks changed, caches dropped) | seconds (median) | ÷ Continuum |",
  "| --- | --- | --- |",
  `| Continuum fast recovery from the mirror (moved ${(moved / MiB).toFixed(1)} MiB) | ${
    c.toFixed(2)
  } | 1.00 |`,
  `| rsync --inplace --no-whole-file | ${rs.toFixed(2)} | ${(rs / c).toFixed(2)} |`,
  `| nbdcopy, full copy from nbdkit | ${nc.toFixed(2)} | ${(nc / c).toFixed(2)} |`,
].join("\n");
console.log(
  `\n${table}\n\nchunk-hash scan (XXH3-128, 1 MiB chunks): ${scanCold.toFixed(2)} GB/s cold, ${
    scanWarm.toFixed(2)
  } GB/s warm`,
);
await writeSection(
  "recovery",
  `## Recovery (\`deno task bench recovery\`)

${await machine()}. ${ROUNDS} rounds; each round overwrites 64 KiB in 1% of the 1 MiB chunks of the local
volume (1 GiB of random data, agent stopped), then repairs the same damage three ways from the gateway's
mirror, page caches dropped before each. Continuum's time is from the API request to the verified end
(both ends hash every chunk, the differing chunks travel through the agent, then the result is hashed again).

${table}

Chunk-hash scan rate of the native library (XXH3-128 over 1 MiB chunks of a 1 GiB file): ${
    scanCold.toFixed(2)
  } GB/s from disk (cache dropped), ${scanWarm.toFixed(2)} GB/s from the page cache.

Targets from the recovery issue: faster than rsync; a scan rate of at least 1 GB/s.`,
);
