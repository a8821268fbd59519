// Initial synchronisation of a volume that already holds data, while writes go on:
// a site holding an older copy receives only the difference.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import {
  Agent,
  Gateway,
  hashAll,
  keygen,
  RemoteGateway,
  type SiteStatus,
  sparseImage,
  tempDir,
  waitFor,
  waitMirrorCaughtUp,
  writeSecret,
} from "./lib/cluster.ts";

const t = suite("replication: initial synchronisation");
const MiB = 1024 * 1024;
const SIZE = 256 * MiB;

async function fillRandom(path: string, size: number): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true });
  const chunk = new Uint8Array(MiB);
  for (let i = 0; i < size / MiB; i++) {
    for (let o = 0; o < MiB; o += 65536) crypto.getRandomValues(chunk.subarray(o, o + 65536));
    await f.write(chunk);
  }
  f.close();
}

t("a 256 MiB volume with data: replicas end equal; a site with an older copy moves < 25%", async () => {
  if (!need("initial sync", { tools: ["fio"] })) return;
  const dir = await tempDir("rep-sync");
  const secret = `${dir}/agent.secret`;
  await writeSecret(secret);
  const lsp = `${dir}/lsp.img`;
  await fillRandom(lsp, SIZE);
  // dr1 holds an older copy: the volume as it was, before 10% of its chunks changed
  const old = `${dir}/old.img`;
  await Deno.copyFile(lsp, old);
  const f = await Deno.open(lsp, { write: true });
  for (let c = 0; c < 256; c += 10) {
    await f.seek(c * MiB, Deno.SeekMode.Start);
    await f.write(crypto.getRandomValues(new Uint8Array(65536)));
  }
  f.close();

  // protection starts with the local site alone: the gateway's mirror gets the volume
  const gw = await new Gateway({ dir, agents: { a1: secret }, bufferSize: "512M" }).start();
  const agent = await new Agent({
    dir,
    id: "a1",
    secretFile: secret,
    gatewaySocket: gw.socket,
    volumes: { vol0: lsp },
  })
    .start();
  const remotes: RemoteGateway[] = [];
  const standbys: Agent[] = [];
  let fio: Deno.ChildProcess | undefined;
  try {
    await waitMirrorCaughtUp(gw, "a1", "vol0", 120_000);
    const localFp = await keygen(`${dir}/local-keys`, "local");
    for (const site of ["dr1", "dr2"]) {
      const r = await new RemoteGateway({
        dir,
        site,
        trust: { local: localFp },
        standbySecrets: { a1: `${dir}/standby-${site}.secret` },
      }).init();
      await writeSecret(`${dir}/standby-${site}.secret`);
      if (site === "dr1") {
        await Deno.mkdir(`${r.home}/replicas/a1`, { recursive: true });
        await Deno.copyFile(old, r.replicaPath("a1", "vol0"));
      }
      await r.start();
      remotes.push(r);
      const img = await sparseImage(`${dir}/rsp-${site}.img`, SIZE);
      if (site === "dr1") await Deno.copyFile(old, img);
      standbys.push(
        await new Agent({
          dir,
          id: "a1",
          secretFile: `${dir}/standby-${site}.secret`,
          gatewaySocket: r.agentSocket,
          volumes: { vol0: img },
          extra: ["--standby"],
          home: `standby-${site}`,
        }).start(),
      );
    }
    // the sites are added: the gateway restarts with them while writes go on
    fio = new Deno.Command("fio", {
      args: [
        "--name=live",
        "--ioengine=nbd",
        `--uri=${agent.uri("vol0")}`,
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=8",
        // live writes in the first 16 MiB: chunks they touch differ too and move
        "--size=16M",
        "--time_based",
        "--runtime=12",
        "--verify_state_save=0",
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    await gw.proc.stop();
    gw.o.extra = [
      "--key-dir",
      `${dir}/local-keys`,
      ...remotes.flatMap((r) => [
        "--remote",
        `${r.o.site}=127.0.0.1:${r.port}`,
        "--remote-fingerprint",
        `${r.o.site}=${r.fingerprint}`,
      ]),
    ];
    await gw.start();
    assert.ok((await fio.status).success, "fio ran through the gateway restart");
    fio = undefined;
    await waitMirrorCaughtUp(gw, "a1", "vol0", 120_000);
    let sites: SiteStatus[] = [];
    await waitFor(
      async () => {
        const s = await gw.status();
        sites = (s as unknown as { sites: SiteStatus[] }).sites;
        const last = s.volumes[0].lastSeq;
        return sites.every((x) => x.volumes[0].state === "consistent" && x.volumes[0].ackedSeq === last);
      },
      180_000,
      "both sites to be synchronised and caught up",
      500,
    );
    const copies: Record<string, string> = { lsp, lgp: gw.mirrorPath("a1", "vol0") };
    for (const [i, r] of remotes.entries()) {
      copies[`rgp-${r.o.site}`] = r.replicaPath("a1", "vol0");
      copies[`rsp-${r.o.site}`] = standbys[i].o.volumes.vol0;
    }
    const sums = await hashAll(copies);
    for (const [k, v] of Object.entries(sums)) assert.is(v, sums.lsp, `${k} equals the agent's volume`);
    const dr1 = sites.find((s) => s.site === "dr1")!.volumes[0];
    const dr2 = sites.find((s) => s.site === "dr2")!.volumes[0];
    console.log(
      `\n  sync bytes moved: dr1 (older copy) ${dr1.syncMoved} = ${
        (100 * dr1.syncMoved / SIZE).toFixed(1)
      }% of the volume; ` +
        `dr2 (empty) ${dr2.syncMoved} = ${(100 * dr2.syncMoved / SIZE).toFixed(1)}%`,
    );
    assert.ok(dr1.syncCompared >= SIZE, "dr1 compared the whole volume");
    assert.ok(dr1.syncMoved < SIZE / 4, `dr1 moved less than 25% (${dr1.syncMoved} bytes)`);
    assert.ok(dr2.syncMoved > SIZE / 2, "dr2 had to receive most of the volume");
  } finally {
    try {
      fio?.kill("SIGKILL");
    } catch { /* exited */ }
    await agent.proc.stop();
    await gw.proc.stop();
    for (const s of standbys) await s.proc.stop();
    for (const r of remotes) await r.proc.stop();
  }
});

t.run();
