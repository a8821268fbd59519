// Two remote sites with standby agents: every copy ends equal and the journal empty.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { hashAll, run, sha256File, startTopology } from "./lib/cluster.ts";

const t = suite("replication: two sites");
const MiB = 1024 * 1024;

t("nbdcopy + fio through the agent: LSP = LGP = RGP = RSP at both sites, journal empty", async () => {
  if (!need("replication", { tools: ["nbdcopy", "fio"] })) return;
  const topo = await startTopology("rep2", { size: 128 * MiB, sites: ["dr1", "dr2"] });
  try {
    const src = `${topo.dir}/random.bin`;
    const f = await Deno.open(src, { write: true, create: true });
    for (let i = 0; i < 64; i++) {
      const chunk = new Uint8Array(MiB);
      for (let o = 0; o < MiB; o += 65536) crypto.getRandomValues(chunk.subarray(o, o + 65536));
      await f.write(chunk);
    }
    f.close();
    await run("nbdcopy", [src, topo.agent.uri("vol0")]);
    const r = await run("fio", [
      "--name=rep",
      "--ioengine=nbd",
      `--uri=${topo.agent.uri("vol0")}`,
      "--rw=randwrite",
      "--bs=4k",
      "--iodepth=16",
      "--offset=64M",
      "--size=64M",
      "--io_size=32M",
      "--verify_state_save=0",
    ]);
    assert.match(r.stdout, /WRITE:/);
    await topo.caughtUp();
    const sums = await hashAll(topo.copies());
    const lsp = sums.lsp;
    for (const [k, v] of Object.entries(sums)) assert.is(v, lsp, `${k} equals the agent's volume`);
    const head = await sha256File(src);
    assert.ok(head.length === 64);
    const s = await topo.gw.status();
    assert.is(s.journal.used, 0, "the journal is empty once every site acknowledged");
    for (const site of ["dr1", "dr2"]) {
      const rs = await topo.remotes[site].status();
      assert.is(rs.replicas.find((x) => x.name === "vol0")?.state, "consistent");
    }
  } finally {
    await topo.stop();
  }
});

t.run();
