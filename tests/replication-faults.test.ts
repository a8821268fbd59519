// Faults between sites: a remote gateway killed at random moments, a network cut,
// a peer with the wrong key. Copies stay prefixes of the write sequence and converge.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Gateway, hashAll, RemoteGateway, sha256File, startTopology, waitFor } from "./lib/cluster.ts";
import { prefixOf, startOrdered } from "./lib/ordered-workload.ts";

const t = suite("replication: faults");
const MiB = 1024 * 1024;
const REGION = 512; // 2 MiB of 4 KiB blocks, overwritten many times

async function converged(topo: Awaited<ReturnType<typeof startTopology>>): Promise<void> {
  await topo.caughtUp();
  const sums = await hashAll(topo.copies());
  for (const [k, v] of Object.entries(sums)) assert.is(v, sums.lsp, `${k} equals the agent's volume`);
}

t("kill -9 of a site at random moments: its copies are always a prefix, then converge", async () => {
  const topo = await startTopology("rep-kill", { size: 32 * MiB, sites: ["dr1", "dr2"] });
  try {
    const w = startOrdered(topo.agent.socket, "vol0", REGION);
    for (let round = 0; round < 3; round++) {
      await new Promise((r) => setTimeout(r, 500 + Math.random() * 1500));
      const dr1 = topo.remotes.dr1;
      dr1.proc.kill("SIGKILL");
      await dr1.proc.exited;
      // the standby keeps what it applied; give it a moment to finish the batch it had
      await new Promise((r) => setTimeout(r, 300));
      for (const path of [dr1.replicaPath("a1", "vol0"), topo.rsp.dr1]) {
        const p = await prefixOf(path, w.blocks, REGION);
        assert.ok("k" in p, `${path} is not a prefix: ${"error" in p ? p.error : ""}`);
      }
      await dr1.start();
    }
    await w.stop();
    assert.ok(w.count() > 500, `the workload made progress (${w.count()} writes)`);
    await converged(topo);
    const log = topo.remotes.dr1.proc.log + topo.remotes.dr2.proc.log;
    assert.not.match(log, /out of sequence/);
  } finally {
    await topo.stop();
  }
});

t("a 10 s network cut: the stream resumes by itself and every copy converges", async () => {
  const topo = await startTopology("rep-cut", { size: 32 * MiB, sites: ["dr1", "dr2"], proxied: ["dr1"] });
  try {
    // at a rate a site on this shared machine keeps up with: the subject is the cut, not throughput
    const w = startOrdered(topo.agent.socket, "vol0", REGION, 0, 1500);
    await new Promise((r) => setTimeout(r, 1500));
    topo.proxies.dr1.cut();
    await new Promise((r) => setTimeout(r, 10_000));
    // dr2 kept up during the cut
    const during = (await topo.sites()).find((s) => s.site === "dr2")!;
    assert.ok(during.lagSeconds < 5, `the other site kept up (lag ${during.lagSeconds}s)`);
    const cutAt = (await topo.sites()).find((s) => s.site === "dr1")!.volumes[0].ackedSeq;
    topo.proxies.dr1.heal();
    await waitFor(
      async () => (await topo.sites()).find((s) => s.site === "dr1")!.volumes[0].ackedSeq > cutAt,
      30_000,
      "the stream to dr1 to resume",
    );
    await w.stop();
    await converged(topo);
    assert.not.match(topo.remotes.dr1.proc.log, /out of sequence/);
  } finally {
    await topo.stop();
  }
});

t("a peer with the wrong key is refused and nothing is applied", async () => {
  const topo = await startTopology("rep-key", { size: 16 * MiB, sites: ["dr1"] });
  try {
    // a second remote site that trusts some other key, not the local gateway's
    const other = await new RemoteGateway({
      dir: topo.dir,
      site: "dr9",
      trust: { local: "sha256:" + "ab".repeat(32) },
      standbySecrets: {},
    }).init();
    await other.start();
    // a local gateway with a valid key pair that dr9 does not trust
    const home = `${topo.dir}/impostor`;
    await Deno.mkdir(home);
    const impostor = await new Gateway({
      dir: home,
      agents: {},
      extra: [
        "--key-dir",
        `${topo.dir}/local-keys`,
        "--remote",
        `dr9=127.0.0.1:${other.port}`,
        "--remote-fingerprint",
        `dr9=${other.fingerprint}`,
      ],
    }).start();
    await waitFor(
      () => /peer rejected/.test(other.proc.log),
      15_000,
      "the remote site to reject the local gateway",
    );
    const line = other.proc.log.split("\n").find((l) => l.includes("peer rejected"))!;
    assert.match(line, /fingerprint/);
    assert.not.match(other.proc.log, /PRIVATE KEY/);
    const s = await other.status();
    assert.is(s.replicas.length, 0, "nothing registered, nothing applied");
    await impostor.proc.stop();
    await other.proc.stop();
    // the trusted site is unaffected
    assert.ok((await sha256File(topo.lsp)).length === 64);
  } finally {
    await topo.stop();
  }
});

t.run();
