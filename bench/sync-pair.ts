// `deno task bench sync-pair`: what a FLUSH costs on this machine's one disk, as the capture
// benchmark's flushing jobs meet it. The qemu mirror makes one copy durable per guest flush (its
// source file); Continuum makes two (the agent's disk and the gateway's journal, both synced at
// once). Each round times a 4 KiB write into a 1 GiB volume file that holds data (written once, as
// the capture benchmark's volumes are) with its fdatasync alone, then the
// same with a 4 KiB append to a 256 MiB journal file synced beside it (both syncs in parallel, as
// the data plane runs them), the journal file once only preallocated (`--buffer-init reserve`) and
// once written through (`zeroes`, the default), and the journal's append and sync alone (what the
// gateway's own disk sees, as deployed); rounds interleaved, medians. A ratio near 2 says
// the two syncs queue behind each other on the device; on separate disks (the gateway on its own
// server, as deployed) they overlap. Prints a table; no section in the docs (docs/benchmarks.md
// quotes it).
import { closeSync, fdatasyncSync, openSync, writeSync } from "node:fs";
import * as native from "../src/native/mod.ts";
import { median, table } from "./lib.ts";

const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const SYNCS = Number(Deno.env.get("BENCH_SYNCS") ?? 400);
const GiB = 1 << 30, MiB = 1 << 20, BLOCK = 4096, RING = 256 * MiB;

const dir = await Deno.makeTempDir({
  dir: new URL("../test-output/", import.meta.url).pathname,
  prefix: "sync-",
});
try {
  const volume = openSync(`${dir}/volume.img`, "w+");
  const zeroes = new Uint8Array(MiB);
  for (let off = 0; off < GiB; off += MiB) writeSync(volume, zeroes, 0, MiB, off);
  fdatasyncSync(volume);
  const reserved = openSync(`${dir}/reserved.ring`, "w+");
  await native.allocate(reserved, 0, RING);
  await native.fdatasync(reserved);
  const written = openSync(`${dir}/written.ring`, "w+");
  for (let off = 0; off < RING; off += MiB) writeSync(written, zeroes, 0, MiB, off);
  await native.fdatasync(written);
  const block = crypto.getRandomValues(new Uint8Array(BLOCK));
  const appended = new Map<number, number>();
  const randomBlock = () => Math.floor(Math.random() * (GiB / BLOCK)) * BLOCK;
  // the main thread's own syscalls, the journal's sync on the FFI's worker thread beside it: no
  // per-call overhead of a nonblocking call in the time of the single sync
  const time = async (journal?: number, alone = false): Promise<number> => {
    const t0 = performance.now();
    if (!alone) writeSync(volume, block, 0, BLOCK, randomBlock());
    if (journal !== undefined) {
      const at = appended.get(journal) ?? 0;
      appended.set(journal, at + 1);
      writeSync(journal, block, 0, BLOCK, (at * BLOCK) % RING);
      const beside = native.fdatasync(journal);
      if (!alone) fdatasyncSync(volume);
      await beside;
    } else fdatasyncSync(volume);
    return (performance.now() - t0) * 1000;
  };
  const one: number[] = [], withReserved: number[] = [], withWritten: number[] = [];
  const reservedAlone: number[] = [], writtenAlone: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    for (let k = 0; k < SYNCS; k++) one.push(await time());
    for (let k = 0; k < SYNCS; k++) withReserved.push(await time(reserved));
    for (let k = 0; k < SYNCS; k++) withWritten.push(await time(written));
    for (let k = 0; k < SYNCS; k++) reservedAlone.push(await time(reserved, true));
    for (let k = 0; k < SYNCS; k++) writtenAlone.push(await time(written, true));
  }
  for (const fd of [volume, reserved, written]) closeSync(fd);
  const a = median(one);
  const row = (what: string, us: number) => [what, us.toFixed(0), (1e6 / us).toFixed(0), (us / a).toFixed(2)];
  console.log(table(["a 4 KiB write made durable", "median µs", "writes + flushes a second", "÷ one copy"], [
    row("one copy (the qemu mirror's flush: its source)", a),
    row("two at once, the journal file preallocated (--buffer-init reserve)", median(withReserved)),
    row("two at once, the journal file written through (--buffer-init zeroes)", median(withWritten)),
    row("the journal's alone (its own disk, as deployed), preallocated", median(reservedAlone)),
    row("the journal's alone (its own disk, as deployed), written through", median(writtenAlone)),
  ]));
  console.log(`medians of ${ROUNDS} × ${SYNCS} syncs per row, the rows taking turns`);
} finally {
  await Deno.remove(dir, { recursive: true });
}
