// Failback when the site lacked records at the failover, end to end in network
// namespaces: a relay on the site link keeps the gateway's last writes from the site
// (it never applies or acknowledges them, the link stays up), the service fails over
// and writes at the site. Failback moves the union of what the site never
// acknowledged (read from the local journal) and what it wrote since its promotion,
// counted, with no scan, and the local volume ends equal to the standby: the writes
// the site never had are undone at home, as the service at the site saw the volume.
// The second case lets the relay deliver the held records after the promotion: the
// site drops them but acknowledges them, so only the snapshot the gateway took at the
// promotion still says the site lacks their chunks; the gateway is killed and started
// again meanwhile (the snapshot is on disk; the site link reconnects while failed over).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { FailoverLab, writeServiceText } from "./lib/failover-lab.ts";
import { run, sha256File, waitFor } from "./lib/cluster.ts";

const t = suite("failback with records the site never acknowledged");
const prereq = { root: true, tools: ["ip", "iptables", "iptables-save", "qemu-io"] };
const MiB = 1024 * 1024;

interface Status {
  volumes: { lastSeq: number; durableSeq: number }[];
  sites: { volumes: { ackedSeq: number; state: string }[] }[];
}

async function status(lab: FailoverLab): Promise<Status> {
  return await lab.api("/api/status") as Status;
}

async function forwardCaughtUp(lab: FailoverLab): Promise<void> {
  await waitFor(
    async () => {
      const s = await status(lab);
      const v = s.sites[0]?.volumes[0];
      return v?.state === "consistent" && v.ackedSeq === s.volumes[0].lastSeq;
    },
    60_000,
    "the remote site to hold everything",
    200,
  );
}

async function qemuWrite(socket: string, pattern: number, offset: number, length: number): Promise<void> {
  await run("qemu-io", [
    "-f",
    "raw",
    `nbd+unix:///vol0?socket=${socket}`,
    "-c",
    `write -P 0x${pattern.toString(16)} ${offset} ${length}`,
  ]);
}

/** The first byte of each MiB of an image, from `first` for `count` MiB. */
async function firstBytes(path: string, first: number, count: number): Promise<number[]> {
  const f = await Deno.open(path);
  try {
    const out: number[] = [];
    const b = new Uint8Array(1);
    for (let i = first; i < first + count; i++) {
      await f.seek(i * MiB, Deno.SeekMode.Start);
      await f.read(b);
      out.push(b[0]);
    }
    return out;
  } finally {
    f.close();
  }
}

/** A lab whose site holds everything but the last 8 MiB written (at 40 MiB), journaled here only. */
async function withHeldWrites(): Promise<FailoverLab> {
  const lab = await new FailoverLab().start({
    sizeMiB: 64,
    serviceOnUnfence: true,
    siteRelay: true,
    // this test moves the service itself: a loaded machine must not fail over early
    gatewayExtra: ["--detector-alpha", "1s"],
  });
  try {
    const agentSock = `${lab.dir}/agent/nbd.sock`;
    await writeServiceText(agentSock, "written before the failure");
    await qemuWrite(agentSock, 0x11, 8 * MiB, 48 * MiB);
    await forwardCaughtUp(lab);

    // the site stops getting records: 8 MiB written at 40 MiB are journaled here only
    await lab.holdRecords(true);
    await qemuWrite(agentSock, 0x33, 40 * MiB, 8 * MiB);
    await waitFor(
      async () => {
        const s = await status(lab);
        return s.volumes[0].durableSeq === s.volumes[0].lastSeq &&
          s.sites[0].volumes[0].ackedSeq < s.volumes[0].lastSeq;
      },
      20_000,
      "the writes to be durable here and unacknowledged by the site",
    );
    // and the agent's dirty map no longer holds them: only the journal knows the site lacks them
    await waitFor(
      async () => (await Deno.readFile(`${lab.dir}/agent/vol0.dirty`)).subarray(64).every((b) => b === 0),
      60_000,
      "the agent's dirty map to be swept",
      200,
    );
    assert.ok(
      (await firstBytes(lab.rsp, 40, 8)).every((b) => b === 0x11),
      "the standby never got the held writes",
    );
    return lab;
  } catch (e) {
    await lab.stop();
    throw e;
  }
}

t("the records the site lacked and its own writes move home, counted, and the copies end equal", async () => {
  if (!need("failback with unacknowledged records in namespaces", prereq)) return;
  const lab = await withHeldWrites();
  const standbySock = `${lab.dir}/standby/nbd.sock`;
  const mirror = `${lab.dir}/gateway/mirrors/app1/vol0.img`;
  try {
    await lab.appService!.stop();
    await waitFor(() => lab.serviceState().then((s) => s === "failed-over"), 30_000, "failover", 100);
    // the service writes at dr1: its text (chunk 0) and 4 MiB at 20 MiB (chunks 20..23)
    await writeServiceText(standbySock, "written at dr1 during the failover");
    await qemuWrite(standbySock, 0x22, 20 * MiB, 4 * MiB);
    const s = await status(lab);
    assert.ok(
      s.sites[0].volumes[0].ackedSeq < s.volumes[0].lastSeq,
      "the held records are still unacknowledged",
    );

    const { status: code, body } = await lab.failback();
    assert.is(code, 200, JSON.stringify(body));
    const report = body.report!;
    assert.is(report.onlineBytes, 0, "no online pass: the divergence is tracked");
    const rec = (await lab.api("/api/recoveries") as { method: string; methodReason: string }[]).at(-1)!;
    assert.is(rec.method, "tracked", rec.methodReason);
    assert.match(rec.methodReason, /\b8 from records \S*dr1 did not acknowledge/, "the held writes' chunks");
    assert.match(rec.methodReason, /\b5 from dr1's writes since the last promotion/, "and the site's own");
    const union = Number(/tracked: (\d+) chunks/.exec(rec.methodReason)?.[1]);
    assert.is(union, 13, rec.methodReason);
    assert.is(report.finalBytes, union * MiB, "the window moved exactly the union");
    // the reset after the recovery dropped the link, and with it what the relay still held
    await waitFor(
      () => lab.relay!.records().some((r) => Number(r.dropped) > 0),
      10_000,
      "the relay to drop the records it held to the end",
    );

    const standby = await sha256File(lab.rsp);
    assert.is(await sha256File(lab.lsp), standby, "the volume equals the standby");
    assert.is(await sha256File(mirror), standby, "and so does the mirror");
    assert.ok(
      (await firstBytes(lab.lsp, 40, 8)).every((b) => b === 0x11),
      "the writes the site never had are undone at home",
    );

    // forward replication resumes once the link carries records again; nothing differs
    await lab.holdRecords(false);
    await forwardCaughtUp(lab);
    assert.is(await sha256File(lab.rsp), standby, "the standby is unchanged by the resynchronisation");
  } finally {
    await lab.stop();
  }
});

t(
  "records held at the failover and acknowledged after the promotion, then a gateway crash: they move home",
  async () => {
    if (!need("failback with records acknowledged after the promotion in namespaces", prereq)) return;
    const lab = await withHeldWrites();
    const standbySock = `${lab.dir}/standby/nbd.sock`;
    const mirror = `${lab.dir}/gateway/mirrors/app1/vol0.img`;
    try {
      await lab.appService!.stop();
      await waitFor(() => lab.serviceState().then((s) => s === "failed-over"), 30_000, "failover", 100);
      // the held records reach the promoted site now: it drops them, and acknowledges them
      await lab.holdRecords(false);
      await forwardCaughtUp(lab);
      assert.ok(
        (await firstBytes(lab.rsp, 40, 8)).every((b) => b === 0x11),
        "the promoted standby did not take the late records",
      );
      // what the site lacks is kept across a crash of this gateway; the site link reconnects
      lab.gateway.kill("SIGKILL");
      await lab.gateway.exited;
      await lab.startGateway();
      await forwardCaughtUp(lab);
      await writeServiceText(standbySock, "written at dr1 during the failover");
      await qemuWrite(standbySock, 0x22, 20 * MiB, 4 * MiB);

      // after the restart the agent and the site link come back in turn (the site session restarts
      // once the agent opens its volume): a failback stopped by that is run again, as an operator would
      let { status: code, body } = await lab.failback();
      for (
        let i = 0;
        i < 20 && code === 409 && /unreachable|not connected|not ready/.test(`${body.error}`);
        i++
      ) {
        await new Promise((r) => setTimeout(r, 500));
        ({ status: code, body } = await lab.failback());
      }
      assert.is(code, 200, JSON.stringify(body));
      const report = body.report!;
      const rec = (await lab.api("/api/recoveries") as { method: string; methodReason: string }[]).at(-1)!;
      assert.is(rec.method, "tracked", rec.methodReason);
      assert.match(
        rec.methodReason,
        /\b8 from records \S*dr1 had not acknowledged at its promotion/,
        "the late records' chunks, acknowledged since",
      );
      assert.match(
        rec.methodReason,
        /\b0 from records \S*dr1 did not acknowledge/,
        "the journal has none left",
      );
      const union = Number(/tracked: (\d+) chunks/.exec(rec.methodReason)?.[1]);
      assert.is(union, 13, rec.methodReason);
      assert.is(report.finalBytes, union * MiB, "the window moved exactly the union");

      const standby = await sha256File(lab.rsp);
      assert.is(await sha256File(lab.lsp), standby, "the whole volume equals the standby");
      assert.is(await sha256File(mirror), standby, "and so does the mirror");
      assert.ok(
        (await firstBytes(lab.lsp, 40, 8)).every((b) => b === 0x11),
        "the writes the site dropped are undone at home",
      );
      await forwardCaughtUp(lab);
      assert.is(await sha256File(lab.rsp), standby, "the standby is unchanged by the resynchronisation");
    } finally {
      await lab.stop();
    }
  },
);

t.run();
