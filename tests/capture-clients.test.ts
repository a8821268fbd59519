// Real NBD clients against the agent, with the local gateway journaling: the data
// read back is what was written, and the gateway's mirror equals the agent's disk.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { run, sha256File, startPair, waitEqual, waitMirrorCaughtUp } from "./lib/cluster.ts";

const t = suite("capture: real NBD clients");
const MiB = 1024 * 1024;
let pair: Awaited<ReturnType<typeof startPair>>;
const ok = need("capture clients", { tools: ["qemu-io", "nbdinfo", "nbdcopy", "fio"] });

t.before(async () => {
  if (ok) pair = await startPair("clients", { vol0: 256 * MiB, vol1: 64 * MiB });
});
t.after(async () => {
  await pair?.stop();
});

t("qemu-io writes patterns at scattered offsets and reads them back", async () => {
  if (!ok) return;
  const offsets = [0, 65536 + 4096, 1 * MiB + 512, 77 * MiB + 12345, 255 * MiB];
  const cmds = offsets.flatMap((o, i) => ["-c", `write -P ${0x11 + i} ${o} 65536`]);
  await run("qemu-io", ["-f", "raw", pair.agent.uri("vol0"), ...cmds, "-c", "flush"]);
  const reads = offsets.flatMap((o, i) => ["-c", `read -P ${0x11 + i} ${o} 65536`]);
  const r = await run("qemu-io", ["-f", "raw", pair.agent.uri("vol0"), ...reads]);
  assert.not.match(r.stdout + r.stderr, /Pattern verification failed|failed/);
  assert.is((r.stdout.match(/^read 65536\/65536/gm) ?? []).length, offsets.length);
  await waitMirrorCaughtUp(pair.gw, "a1", "vol0");
  assert.is(await sha256File(pair.gw.mirrorPath("a1", "vol0")), await sha256File(pair.paths.vol0));
});

t("nbdinfo shows the size and the transmission flags", async () => {
  if (!ok) return;
  const r = await run("nbdinfo", ["--json", pair.agent.uri("vol0")]);
  const info = JSON.parse(r.stdout);
  const e = info.exports[0];
  assert.is(e["export-size"], 256 * MiB);
  assert.is(e.is_read_only, false);
  assert.is(e.can_flush, true);
  assert.is(e.can_fua, true);
  assert.is(e.can_trim, true);
  assert.is(e.can_zero, true);
  assert.is(e.can_multi_conn, true);
  assert.is(e.block_size_maximum, 32 * MiB);
});

t("nbdinfo --list lists every volume", async () => {
  if (!ok) return;
  const r = await run("nbdinfo", ["--list", "--json", `nbd+unix:///?socket=${pair.agent.socket}`]);
  const names = JSON.parse(r.stdout).exports.map((e: { "export-name": string }) => e["export-name"]).sort();
  assert.equal(names, ["vol0", "vol1"]);
});

t("nbdcopy of 64 MiB random data in and out: equal, and the mirror equals the volume", async () => {
  if (!ok) return;
  const src = `${pair.dir}/random.bin`;
  const f = await Deno.open(src, { write: true, truncate: true, create: true });
  for (let i = 0; i < 64; i++) {
    const chunk = new Uint8Array(MiB);
    for (let o = 0; o < MiB; o += 65536) crypto.getRandomValues(chunk.subarray(o, o + 65536));
    await f.write(chunk);
  }
  f.close();
  await run("nbdcopy", [src, pair.agent.uri("vol1")]);
  const back = `${pair.dir}/back.bin`;
  await run("nbdcopy", [pair.agent.uri("vol1"), back]);
  assert.is(await sha256File(back), await sha256File(src));
  await waitMirrorCaughtUp(pair.gw, "a1", "vol1");
  assert.is(await sha256File(pair.gw.mirrorPath("a1", "vol1")), await sha256File(pair.paths.vol1));
});

t("fio random 4 KiB writes, iodepth 16, verify=crc32c: no errors, mirror equal", async () => {
  if (!ok) return;
  const r = await run("fio", [
    "--name=verify",
    "--ioengine=nbd",
    `--uri=${pair.agent.uri("vol0")}`,
    "--rw=randwrite",
    "--bs=4k",
    "--iodepth=16",
    "--size=64M",
    "--verify=crc32c",
    "--do_verify=1",
    "--verify_fatal=1",
    "--output-format=json",
    "--verify_state_save=0",
  ], { allowFail: true });
  assert.is(r.code, 0, `fio failed: ${r.stderr}`);
  const job = JSON.parse(r.stdout.slice(r.stdout.indexOf("{"))).jobs[0];
  assert.is(job.error, 0);
  assert.ok(job.write.io_bytes >= 64 * MiB, "fio wrote the whole range");
  await waitMirrorCaughtUp(pair.gw, "a1", "vol0");
  await waitEqual(pair.gw.mirrorPath("a1", "vol0"), pair.paths.vol0, 30_000);
});

t.run();
