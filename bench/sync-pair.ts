// `deno task bench sync-pair`: what a FLUSH costs on this machine's one disk, as the capture
// benchmark's flushing jobs meet it. The qemu mirror makes one copy durable per guest flush (its
// source file); Continuum makes two (the agent's disk and the gateway's journal, both synced at
// once). Each round times a 4 KiB write into a sparse 1 GiB file with its fdatasync alone, then the
// same with a 4 KiB append to a preallocated 256 MiB journal file synced beside it (both syncs in
// parallel, as the data plane runs them); rounds interleaved, medians. A ratio near 2 says the two
// syncs queue behind each other on the device; on separate disks (the gateway on its own server,
// as deployed) they overlap. Prints a table; no section in the docs (docs/benchmarks.md quotes it).
import { closeSync, fdatasyncSync, openSync, writeSync } from "node:fs";
import * as native from "../src/native/mod.ts";
import { median, table } from "./lib.ts";

const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const SYNCS = Number(Deno.env.get("BENCH_SYNCS") ?? 400);
const GiB = 1 << 30, MiB = 1 << 20, BLOCK = 4096;

const dir = await Deno.makeTempDir({
  dir: new URL("../test-output/", import.meta.url).pathname,
  prefix: "sync-",
});
try {
  const volume = openSync(`${dir}/volume.img`, "w+");
  const journal = openSync(`${dir}/journal.ring`, "w+");
  await Deno.truncate(`${dir}/volume.img`, GiB);
  await native.allocate(journal, 0, 256 * MiB);
  await native.fdatasync(journal);
  const block = crypto.getRandomValues(new Uint8Array(BLOCK));
  let appended = 0;
  const randomBlock = () => Math.floor(Math.random() * (GiB / BLOCK)) * BLOCK;
  // the main thread's own syscalls, the journal's sync on the FFI's worker thread beside it: no
  // per-call overhead of a nonblocking call in the time of the single sync
  const time = async (both: boolean): Promise<number> => {
    const t0 = performance.now();
    writeSync(volume, block, 0, BLOCK, randomBlock());
    if (both) {
      writeSync(journal, block, 0, BLOCK, (appended++ * BLOCK) % (256 * MiB));
      const beside = native.fdatasync(journal);
      fdatasyncSync(volume);
      await beside;
    } else fdatasyncSync(volume);
    return (performance.now() - t0) * 1000;
  };
  const one: number[] = [], two: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    for (let k = 0; k < SYNCS; k++) one.push(await time(false));
    for (let k = 0; k < SYNCS; k++) two.push(await time(true));
  }
  closeSync(volume);
  closeSync(journal);
  const a = median(one), b = median(two);
  console.log(table(["a 4 KiB write made durable", "median µs", "writes + flushes a second"], [
    ["one copy (the qemu mirror's flush: its source)", a.toFixed(0), (1e6 / a).toFixed(0)],
    [
      "two copies at once (Continuum's: the agent's disk and the journal)",
      b.toFixed(0),
      (1e6 / b).toFixed(0),
    ],
  ]));
  console.log(`two ÷ one: ${(b / a).toFixed(2)} (${ROUNDS} rounds of ${SYNCS} each)`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
