// Security checks, replay and impersonation, against running roles:
// - agent link (over TCP, where it is sealed): a captured session (recorded by a proxy)
//   replayed in a new connection is refused at the challenge (fresh nonce) and journals
//   nothing; a record a man in the middle duplicates inside a session fails authentication;
//   a batch in clear, as over a Unix socket, fails it too; a wrong secret is refused before
//   any record is read; an impostor gateway gets nothing past the hello;
// - heartbeats: datagrams recorded from an agent and sent again later are dropped as
//   replays, and after the agent restarts, as belonging to a retired boot;
// - site link: the bytes of a recorded session replayed in a new connection are
//   refused by the remote gateway (no session starts, nothing applied); records sent
//   again inside an authenticated session are dropped as duplicates and never roll a
//   replica back; a client with an unpinned certificate is dropped before any record.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  alive,
  concat,
  dropBulk,
  joined,
  readToEnd,
  recordFrame,
  RecordingProxy,
  sendDatagrams,
  UdpRelay,
  writeAll,
} from "./lib/fuzz.ts";
import {
  Agent,
  Gateway,
  sha256File,
  sparseImage,
  startTopology,
  tempDir,
  waitEqual,
  waitFor,
  waitMirrorCaughtUp,
  writeSecret,
} from "./lib/cluster.ts";
import { NbdClient } from "./lib/nbd-client.ts";
import { ConnReader, ConnWriter } from "../src/io/conn-reader.ts";
import { decodeJson, decodeSeqFrame, FrameType, jsonFrame, readFrame } from "../src/wire/frames.ts";
import { frame, helloFrame, LinkClient, linkSecrets, plainBatch, sealBatch } from "./lib/link-client.ts";
import { encodeRecord, Kind } from "../src/record/record.ts";
import { connectSecure } from "../src/transport/secure.ts";
import { generateIdentity, loadIdentity } from "../src/transport/identity.ts";
import { assertRefused, RawSide } from "./lib/site-handshake.ts";
import { readSecretFile } from "../src/wire/secret-file.ts";

const KiB = 1024, MiB = 1024 * KiB;
const dec = new TextDecoder();

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

function writeRecord(volume: number, seq: number, offset: number, data: Uint8Array): Uint8Array {
  return encodeRecord(
    { kind: Kind.Write, flags: 0, volume, length: data.length, seq, offset, time: Date.now(), pos: 0 },
    data,
  );
}

/** Writes and flushes over NBD; fails (rather than hangs) when no answer comes within 20 s. */
async function nbdWrite(socket: string, offset: number, data: Uint8Array): Promise<void> {
  const c = await NbdClient.connect(socket);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      c.close();
      reject(new Error(`no answer to a write + flush at ${offset} within 20 s`));
    }, 20_000);
  });
  try {
    await Promise.race([
      (async () => {
        await c.go("vol0");
        await c.write(offset, data);
        await c.flush();
        await c.disconnect();
      })(),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------
const link = suite("security: agent link and heartbeats, replayed");
let dir = "";
let gw: Gateway;
let agent: Agent;
let proxy: RecordingProxy;
let relay: UdpRelay;
let hbTarget = { host: "127.0.0.1", port: 0 };
let lsp = "";

interface HbStats {
  accepted: number;
  dropped: Record<string, number>;
}
async function hb(): Promise<HbStats> {
  return ((await gw.status()) as unknown as { heartbeats: HbStats }).heartbeats;
}
async function lastSeq(): Promise<number> {
  return (await gw.status()).volumes.find((v) => v.agent === "a1" && v.name === "vol0")?.lastSeq ?? -1;
}

link.before(async () => {
  dir = await tempDir("secreplay");
  await writeSecret(`${dir}/agent.secret`);
  // a2: this suite's own sessions, which must not displace the agent's
  const agents = { a1: `${dir}/agent.secret`, a2: `${dir}/agent.secret` };
  gw = await new Gateway({ dir, agents, tcp: true }).start();
  const ready = await gw.proc.waitForLog("local gateway ready");
  const [host, port] = String(ready.heartbeats).split(":");
  hbTarget = { host, port: Number(port) };
  relay = await UdpRelay.start(hbTarget);
  proxy = new RecordingProxy({ hostname: "127.0.0.1", port: gw.agentPort }, { port: 0 });
  lsp = await sparseImage(`${dir}/vol0.img`, 4 * MiB);
  agent = await new Agent({
    dir,
    id: "a1",
    secretFile: `${dir}/agent.secret`,
    gatewayPort: proxy.port,
    volumes: { vol0: lsp },
    extra: ["--heartbeat-to", `127.0.0.1:${relay.port}`, "--heartbeat-interval", "50ms"],
  }).start();
  await waitFor(() => gw.status().then((s) => s.agents.includes("a1")), 20_000, "agent to connect");
  await nbdWrite(agent.socket, 0, pattern(256 * KiB, 1));
  await waitMirrorCaughtUp(gw, "a1", "vol0");
});
link.after(async () => {
  await agent?.proc.stop();
  await gw?.proc.stop();
  proxy?.close();
  await relay?.close();
  await dropBulk(dir);
});

link(
  "a recorded agent session replayed in a new connection is refused at the challenge; nothing is journaled",
  async () => {
    const cap = proxy.captures[0];
    const up = joined(cap.up);
    assert.ok(up.length > 256 * KiB, "the capture holds the session's records");
    assert.is(up[4], FrameType.Hello, "the capture starts with the hello");
    const seqBefore = await lastSeq();
    const refusedBefore = (await gw.status()).refused["authentication failed"] ?? 0;
    const mirrorBefore = await sha256File(gw.mirrorPath("a1", "vol0"));
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: gw.agentPort });
    const reading = readToEnd(conn, 15_000);
    try {
      await writeAll(conn, up);
    } catch { /* the gateway closed first */ }
    const got = await reading;
    assert.not.ok(got.timedOut, "the gateway closed the replayed session");
    // the gateway's answer: its (new) challenge, then a denial; no welcome, so no proof of its own
    const answers: number[] = [];
    for (let at = 0; at + 5 <= got.bytes.length;) {
      answers.push(got.bytes[at + 4]);
      at += 4 + new DataView(got.bytes.buffer, got.bytes.byteOffset + at, 4).getUint32(0);
    }
    assert.equal(answers, [FrameType.Challenge, FrameType.Denied], "challenge, then denied");
    assert.match(dec.decode(got.bytes), /authentication failed/);
    // the count reaches the status from the data plane's events, a moment after the denial
    await waitFor(
      () => gw.status().then((s) => s.refused["authentication failed"] === refusedBefore + 1),
      5_000,
      "the refusal to be counted",
    );
    const st = await gw.status();
    assert.is(st.refused["authentication failed"], refusedBefore + 1);
    assert.is(await lastSeq(), seqBefore, "no record of the replay was journaled");
    assert.ok(st.agents.includes("a1"), "the real agent's session was not displaced");
    assert.is(await sha256File(gw.mirrorPath("a1", "vol0")), mirrorBefore, "the mirror is unchanged");
  },
);

link("a wrong secret is refused before any record is read (records sent right after the hello)", async () => {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: gw.agentPort });
  const gwNonce = await LinkClient.challenge(new ConnReader(conn));
  const mine = crypto.getRandomValues(new Uint8Array(32));
  const wrong = linkSecrets(
    new TextEncoder().encode("not-the-agent-secret-0123456789!"),
    "a1",
    gwNonce,
    mine,
  );
  const seqBefore = await lastSeq();
  // what a client that guessed would send on: its hello, then batches sealed with its own keys
  await writeAll(
    conn,
    concat(
      helloFrame("a1", mine, wrong.agentProof),
      sealBatch(
        wrong.agentKey,
        0n,
        concat(
          frame(
            FrameType.Open,
            new TextEncoder().encode(JSON.stringify({ id: 1, name: "vol0", size: 4 * MiB })),
          ),
          recordFrame(writeRecord(1, seqBefore + 1, 0, pattern(4096, 9))),
        ),
      ),
    ),
  );
  const got = await readToEnd(conn, 10_000);
  const text = dec.decode(got.bytes);
  assert.match(text, /authentication failed/);
  assert.not.match(text, /lastSeq/, "the open was never answered");
  assert.is(await lastSeq(), seqBefore);
  assert.ok(await alive(gw.proc));
});

link(
  "the link is sealed over TCP and in clear over a Unix socket; a batch in clear over TCP is refused",
  async () => {
    assert.match(agent.proc.log, /"link":"sealed \(AES-256-GCM\)"/, "the agent's TCP link is sealed");
    const secret = readSecretFile(`${dir}/agent.secret`);
    const open = jsonFrame(FrameType.Open, { id: 1, name: "clear", size: 64 * KiB });
    const local = await LinkClient.connect(gw.socket, "a2", secret);
    try {
      assert.ok(local.plain);
      await local.send(open);
      const answer = await local.next();
      assert.is(answer?.type, FrameType.Opened, "a batch in clear over the Unix socket is taken");
      assert.is(decodeJson<{ error?: string }>(answer!.body).error, undefined);
    } finally {
      local.close();
    }
    const log0 = gw.proc.log.length;
    const remote = await LinkClient.connect({ port: gw.agentPort }, "a2", secret);
    try {
      assert.not.ok(remote.plain);
      // what a Unix-socket peer sends, with any 16 bytes where the tag goes
      await writeAll(remote.conn, concat(plainBatch(open), new Uint8Array(16)));
      const { frames, timedOut } = await remote.drain(10_000);
      assert.not.ok(timedOut, "the gateway ended the session");
      assert.not.ok(frames.some((f) => f.type === FrameType.Opened), "the open was never answered");
      // the log line comes through the data plane's events, a moment after the session ended
      await waitFor(() => gw.proc.log.slice(log0).includes("failed authentication"), 10_000, "the refusal");
    } finally {
      remote.close();
    }
  },
);

link(
  "an impostor gateway that cannot prove the secret gets no data (it reflects the agent's own proof)",
  async () => {
    const path = `${dir}/impostor.sock`;
    const listener = Deno.listen({ transport: "unix", path });
    const seen: { afterHello: number; hello: boolean }[] = [];
    const serving = (async () => {
      for await (const conn of listener) {
        const reader = new ConnReader(conn);
        const s = { afterHello: 0, hello: false };
        seen.push(s);
        const challenge = new Uint8Array(34);
        new DataView(challenge.buffer).setUint16(0, 2);
        challenge.set(crypto.getRandomValues(new Uint8Array(32)), 2);
        await writeAll(conn, frame(FrameType.Challenge, challenge)).catch(() => {});
        const hello = await readFrame(reader).catch(() => undefined);
        if (hello?.type !== FrameType.Hello) {
          conn.close();
          continue;
        }
        s.hello = true;
        // the agent's own proof sent back as the gateway's: it must not pass
        await writeAll(conn, frame(FrameType.Welcome, hello.body.slice(hello.body.length - 32))).catch(
          () => {},
        );
        const rest = await readToEnd(conn, 3_000);
        s.afterHello = rest.bytes.length;
      }
    })();
    let victim: Agent | undefined;
    try {
      const other = await sparseImage(`${dir}/impostor-vol.img`, MiB);
      const v = victim = await new Agent({
        dir,
        home: "impostor-agent",
        id: "a1",
        secretFile: `${dir}/agent.secret`,
        gatewaySocket: path,
        volumes: { vol0: other },
      }).start();
      await waitFor(
        () => v.proc.log.includes("gateway failed to prove it holds this agent's secret"),
        20_000,
        "the agent to refuse the impostor",
      );
      // each of the impostor's sessions ends within 3 s of the hello: wait for those to settle
      await new Promise((r) => setTimeout(r, 3_500));
      assert.ok(seen.some((s) => s.hello), "the agent sent its hello");
      for (const s of seen) assert.is(s.afterHello, 0, "nothing after the hello reached the impostor");
    } finally {
      await victim?.proc.stop();
      listener.close();
      await serving.catch(() => {});
    }
  },
);

link(
  // also the regression test of "a FLUSH in flight when the link drops": the duplicate ends the
  // session just after the record it copies was journaled; the gateway's Durable for it went
  // nowhere and the agent, with nothing to resend, waited for it until its next write
  "a batch a man in the middle replays inside the session is refused; the copies stay equal " +
    "(regression: a FLUSH in flight when the link drops is answered)",
  async () => {
    const before = proxy.duplicated;
    const log0 = gw.proc.log.length;
    for (let i = 0; i < 40 && proxy.duplicated === before; i++) {
      proxy.duplicateBatch = true;
      await nbdWrite(agent.socket, 512 * KiB + i * 4 * KiB, pattern(4 * KiB, 100 + i));
    }
    proxy.duplicateBatch = false;
    assert.ok(proxy.duplicated > before, "the proxy replayed a batch");
    // its nonce was used: the copy fails authentication
    await waitFor(() => gw.proc.log.slice(log0).includes("failed authentication"), 10_000, "the refusal");
    // the agent reconnects and resends what was not confirmed: nothing lost, nothing applied twice
    await waitFor(() => gw.status().then((s) => s.agents.includes("a1")), 20_000, "agent to reconnect");
    await nbdWrite(agent.socket, 3 * MiB, pattern(4096, 7));
    await waitMirrorCaughtUp(gw, "a1", "vol0");
    await waitEqual(gw.mirrorPath("a1", "vol0"), lsp, 30_000);
  },
);

link("heartbeat datagrams recorded from the agent and sent again are dropped as replays", async () => {
  await waitFor(
    async () => relay.datagrams.length >= 10 && (await hb()).accepted >= 10,
    10_000,
    "heartbeats",
  );
  const recorded = relay.datagrams.slice(0, 10).map((d) => d.bytes);
  const before = await hb();
  await sendDatagrams(recorded, hbTarget);
  const after = await waitFor(
    async () => {
      const s = await hb();
      return s.dropped.replay >= before.dropped.replay + recorded.length ? s : undefined;
    },
    10_000,
    "the replays to be dropped",
  );
  assert.is(after.dropped.replay, before.dropped.replay + recorded.length, "every replayed datagram dropped");
  // the agent's own heartbeats keep coming through the relay meanwhile; none of the replays was accepted
  assert.ok(after.accepted - before.accepted <= relay.datagrams.length - 10);
});

link("after the agent restarts, heartbeats of its previous boot are dropped (retired boot)", async () => {
  const old = relay.datagrams.slice(-5).map((d) => d.bytes);
  const bootOf = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset).getBigUint64(6);
  const oldBoot = bootOf(old[0]);
  await agent.proc.stop();
  await agent.start();
  await waitFor(
    () => relay.datagrams.length > 0 && bootOf(relay.datagrams[relay.datagrams.length - 1].bytes) !== oldBoot,
    10_000,
    "heartbeats of the new boot",
  );
  await waitFor(async () => (await hb()).accepted > 0, 5_000, "the new boot to be accepted");
  await new Promise((r) => setTimeout(r, 200));
  const before = await hb();
  await sendDatagrams(old, hbTarget);
  const after = await waitFor(
    async () => {
      const s = await hb();
      return s.dropped["retired-boot"] >= before.dropped["retired-boot"] + old.length ? s : undefined;
    },
    10_000,
    "the old boot's datagrams to be dropped",
  );
  assert.is(after.dropped["retired-boot"], before.dropped["retired-boot"] + old.length);
});

link.run();

// ---------------------------------------------------------------------------
const site = suite("security: site link, replayed and impersonated");
let topo: Awaited<ReturnType<typeof startTopology>>;
let tcpProxy: RecordingProxy;
let sent: { first: Uint8Array; second: Uint8Array; seq: number } | undefined;
const SITE_VOL = 7; // the sender's id for vol0 in our own sessions

async function replica(): Promise<{ lastSeq: number; appliedSeq: number }> {
  const s = await topo.remotes.s1.status();
  const r = s.replicas.find((x) => x.agent === "a1" && x.name === "vol0");
  return { lastSeq: r?.lastSeq ?? -1, appliedSeq: r?.appliedSeq ?? -1 };
}

const count = (text: string, msg: string) =>
  text.split("\n").filter((l) => l.includes(`"msg":"${msg}"`)).length;

/** A site session of our own, as the local site (its identity), through `port`. */
async function siteSession(port: number) {
  const identity = await loadIdentity(`${topo.dir}/local-keys`);
  const auth = await connectSecure({
    hostname: "127.0.0.1",
    port,
    identity,
    expectedFingerprint: topo.remotes.s1.fingerprint,
    peerName: "s1",
  });
  const conn = auth.conn;
  const reader = new ConnReader(conn, 1 << 20);
  const writer = new ConnWriter(conn);
  writer.send(jsonFrame(FrameType.SiteHello, {
    v: 1,
    site: "local",
    volumes: [{ id: SITE_VOL, agent: "a1", name: "vol0", size: MiB }],
  }));
  const w = await readFrame(reader);
  assert.is(w?.type, FrameType.SiteWelcome);
  const welcome = decodeJson<{ volumes: { id: number; lastSeq: number }[] }>(w!.body);
  const last = welcome.volumes.find((v) => v.id === SITE_VOL)!.lastSeq;
  let acked = 0;
  const reading = (async () => {
    try {
      while (true) {
        const f = await readFrame(reader);
        if (!f) return;
        if (f.type === FrameType.Accepted) acked = decodeSeqFrame(f.body).seq;
      }
    } catch { /* closed */ }
  })();
  return {
    lastSeq: last,
    send: (b: Uint8Array) => writer.send(b),
    acked: () => acked,
    async close() {
      await writer.drained();
      conn.close();
      await reading;
    },
  };
}

site.before(async () => {
  topo = await startTopology("secsite", { size: MiB, sites: ["s1"] });
  await nbdWrite(topo.agent.socket, 0, pattern(128 * KiB, 3));
  await topo.caughtUp();
  // from here on, this test is the local site
  await topo.agent.proc.stop();
  await topo.gw.proc.stop();
  await waitFor(() => topo.remotes.s1.status().then((s) => s.sites.length === 0), 20_000, "the site to go");
  tcpProxy = new RecordingProxy({ hostname: "127.0.0.1", port: topo.remotes.s1.port }, { port: 0 });
  // the session that gets recorded: two new records, acknowledged
  const s = await siteSession(tcpProxy.port);
  const first = writeRecord(SITE_VOL, s.lastSeq + 1, 0, pattern(4096, 11));
  const second = writeRecord(SITE_VOL, s.lastSeq + 2, 4096, pattern(4096, 12));
  s.send(recordFrame(first));
  s.send(recordFrame(second));
  await waitFor(() => s.acked() >= 2, 20_000, "the records to be acknowledged");
  await s.close();
  sent = { first, second, seq: s.lastSeq + 2 };
  await waitFor(async () => (await replica()).appliedSeq === sent!.seq, 20_000, "the replica to apply them");
});
site.after(async () => {
  tcpProxy?.close();
  await topo?.stop();
  await dropBulk(topo?.dir);
});

site(
  "a recorded site session replayed in a new connection is refused: no session starts, nothing is applied",
  async () => {
    const remote = topo.remotes.s1;
    const cap = tcpProxy.captures[0];
    const up = joined(cap.up);
    assert.ok(up.length > 8 * KiB, "the capture holds the session");
    const startedBefore = count(remote.proc.log, "site stream started");
    const img = remote.replicaPath("a1", "vol0");
    const hashBefore = await sha256File(img);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: remote.port });
    const reading = readToEnd(conn, 15_000);
    try {
      await writeAll(conn, up);
    } catch { /* refused first */ }
    await reading;
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(await alive(remote.proc), "the remote gateway lives");
    assert.is(count(remote.proc.log, "site stream started"), startedBefore, "no site session started");
    assert.is((await replica()).lastSeq, sent!.seq, "nothing journaled");
    assert.is(await sha256File(img), hashBefore, "the replica is unchanged");
  },
);

site(
  "records sent again inside an authenticated session are dropped and never roll the replica back",
  async () => {
    const s = await siteSession(topo.remotes.s1.port);
    assert.is(s.lastSeq, sent!.seq);
    // a newer write over the first record's range, then both old records again
    const newer = pattern(4096, 13);
    s.send(recordFrame(writeRecord(SITE_VOL, sent!.seq + 1, 0, newer)));
    s.send(recordFrame(sent!.first));
    s.send(recordFrame(sent!.second));
    await waitFor(() => s.acked() >= 3, 20_000, "all three to be acknowledged");
    await s.close();
    await waitFor(async () => (await replica()).appliedSeq === sent!.seq + 1, 20_000, "the replica to apply");
    const img = await Deno.readFile(topo.remotes.s1.replicaPath("a1", "vol0"));
    assert.equal(img.subarray(0, 4096), newer, "the replayed older record did not overwrite the newer data");
    assert.equal(img.subarray(4096, 8192), pattern(4096, 12));
    assert.is((await replica()).lastSeq, sent!.seq + 1);
  },
);

site("a client with an unpinned certificate is dropped before any record is read", async () => {
  const remote = topo.remotes.s1;
  const stranger = await generateIdentity(`${topo.dir}/stranger-keys`, { name: "stranger" });
  const startedBefore = count(remote.proc.log, "site stream started");
  const rejectedBefore = count(remote.proc.log, "peer rejected");
  const before = await replica();
  const stream = concat(
    jsonFrame(FrameType.SiteHello, {
      v: 1,
      site: "local",
      volumes: [{ id: SITE_VOL, agent: "a1", name: "vol0", size: MiB }],
    }),
    recordFrame(writeRecord(SITE_VOL, before.lastSeq + 1, 0, pattern(4096, 66))),
  );
  // it proves its own key and sends its stream straight away
  const raw = await RawSide.client(remote.port);
  await raw.proveAsClient(stranger, remote.fingerprint);
  await raw.send(stream);
  await raw.closed();
  raw.close();
  await waitFor(() => count(remote.proc.log, "peer rejected") > rejectedBefore, 10_000, "the rejection log");
  const line = remote.proc.records().filter((r) => r.msg === "peer rejected").pop()!;
  assert.is(line.fingerprint, stranger.fingerprint);
  assert.is(count(remote.proc.log, "site stream started"), startedBefore);
  assert.equal(await replica(), before, "nothing journaled or applied");
  // and connectSecure, pinning the remote, cannot pass off the stranger either
  await assertRefused(remote.port, stranger, remote.fingerprint, /refused|closed/);
  assert.ok(await alive(remote.proc));
});

site.run();
