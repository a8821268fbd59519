// Bad input gets a clear error and loses nothing; the server keeps serving others.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Agent, sparseImage, startPair, waitFor, writeSecret } from "./lib/cluster.ts";
import { goData, NbdClient, NbdReplyError } from "./lib/nbd-client.ts";
import { EINVAL, ENOSPC, OPT_GO, REP_ERR_UNKNOWN } from "./lib/nbd-protocol.ts";

const t = suite("capture: bad input");
const MiB = 1024 * 1024;
let pair: Awaited<ReturnType<typeof startPair>>;

t.before(async () => {
  pair = await startPair("badinput", { vol0: 16 * MiB });
  // the new volume's initial synchronisation (one record per 1 MiB chunk) is over before the
  // tests count what gets journaled
  await waitFor(async () => (await lastSeq()) >= 16, 30_000, "the initial synchronisation");
});
t.after(async () => {
  await pair?.stop();
});

async function nbdError(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    if (e instanceof NbdReplyError) return e.code;
    throw e;
  }
  throw new Error("request succeeded but should have failed");
}

async function stillServes(): Promise<void> {
  const c = await NbdClient.connect(pair.agent.socket);
  await c.go("vol0");
  const data = crypto.getRandomValues(new Uint8Array(4096));
  await c.write(8 * MiB, data);
  assert.equal(await c.read(8 * MiB, 4096), data);
  await c.disconnect();
}

async function lastSeq(): Promise<number> {
  return (await pair.gw.status()).volumes.find((v) => v.name === "vol0")!.lastSeq;
}

t(
  "a request past the end of the export gets EINVAL (read) / ENOSPC (write), and the connection goes on",
  async () => {
    const c = await NbdClient.connect(pair.agent.socket);
    await c.go("vol0");
    assert.is(c.size, 16 * MiB);
    assert.is(await nbdError(c.read(16 * MiB - 512, 4096)), EINVAL);
    assert.is(await nbdError(c.write(16 * MiB, new Uint8Array(512))), ENOSPC);
    assert.is(await nbdError(c.trim(16 * MiB, 4096)), EINVAL);
    assert.equal(await c.read(0, 512), new Uint8Array(512));
    await c.disconnect();
  },
);

t("oversized lengths are refused and the stream stays in step", async () => {
  const c = await NbdClient.connect(pair.agent.socket);
  await c.go("vol0");
  const before = await lastSeq();
  assert.is(await nbdError(c.request({ flags: 0, type: 0, offset: 0, length: 64 * MiB })), EINVAL);
  // a write of 40 MiB (over the 32 MiB maximum): its payload is consumed, nothing is written
  const big = new Uint8Array(40 * MiB).fill(0x5a);
  assert.is(await nbdError(c.request({ flags: 0, type: 1, offset: 0, length: big.length }, big)), EINVAL);
  assert.equal(await c.read(0, 4096), new Uint8Array(4096));
  assert.is(await lastSeq(), before, "nothing journaled");
  await c.disconnect();
});

t("an unknown command and unknown command flags get EINVAL", async () => {
  const c = await NbdClient.connect(pair.agent.socket);
  await c.go("vol0");
  assert.is(await nbdError(c.request({ flags: 0, type: 99, offset: 0, length: 0 })), EINVAL);
  assert.is(
    await nbdError(c.request({ flags: 0x100, type: 0, offset: 0, length: 512 }, undefined, 512)),
    EINVAL,
  );
  await c.disconnect();
  await stillServes();
});

t("an unknown export at NBD_OPT_GO gets NBD_REP_ERR_UNKNOWN, then a known one works", async () => {
  const c = await NbdClient.connect(pair.agent.socket);
  await c.greet();
  const r = await c.option(OPT_GO, goData("no-such-volume"));
  assert.is(r.type, REP_ERR_UNKNOWN);
  assert.match(new TextDecoder().decode(r.data), /unknown export "no-such-volume"/);
  c.close();
  await stillServes();
});

t("a client that disconnects mid-payload writes nothing", async () => {
  const before = await lastSeq();
  const c = await NbdClient.connect(pair.agent.socket);
  await c.go("vol0");
  const header = new Uint8Array(28);
  const v = new DataView(header.buffer);
  v.setUint32(0, 0x25609513);
  v.setUint16(6, 1);
  v.setBigUint64(8, 7n);
  v.setBigUint64(16, BigInt(2 * MiB));
  v.setUint32(24, MiB);
  await c.writeAll(header);
  await c.writeAll(new Uint8Array(1000).fill(0xee));
  c.close();
  await new Promise((r) => setTimeout(r, 300));
  await stillServes();
  const r = await NbdClient.connect(pair.agent.socket);
  await r.go("vol0");
  assert.equal(await r.read(2 * MiB, 4096), new Uint8Array(4096));
  await r.disconnect();
  assert.is(await lastSeq(), before + 1, "only stillServes' own write was journaled");
  assert.match(pair.agent.proc.log, /NBD client disconnected mid-payload/);
});

t("garbage before the handshake closes that connection only", async () => {
  const c = await Deno.connect({ transport: "unix", path: pair.agent.socket });
  await c.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + "z".repeat(100)));
  const buf = new Uint8Array(1024);
  let total = 0;
  while (true) {
    const n = await c.read(buf).catch(() => null);
    if (n === null) break;
    total += n;
  }
  c.close();
  assert.ok(total <= 18, "the server sent nothing past its greeting");
  await waitFor(() => /NBD handshake refused/.test(pair.agent.proc.log), 5000, "refusal logged");
  await stillServes();
});

t(
  "an agent with a wrong secret is refused, nothing is journaled, the log names the peer but not the secret",
  async () => {
    const wrong = `${pair.dir}/wrong.secret`;
    await writeSecret(wrong);
    const img = await sparseImage(`${pair.dir}/intruder.img`, 16 * MiB);
    const before = (await pair.gw.status()).volumes.length;
    const seqBefore = await lastSeq();
    const intruder = await new Agent({
      dir: pair.dir,
      id: "a1",
      secretFile: wrong,
      gatewaySocket: pair.gw.socket,
      volumes: { evil: img },
      home: "intruder",
    }).start();
    await waitFor(
      () => pair.gw.status().then((s) => (s.refused["authentication failed"] ?? 0) >= 1),
      10_000,
      "the gateway to refuse the intruder",
    );
    await waitFor(
      () => /gateway refused authentication/.test(intruder.proc.log),
      10_000,
      "the agent to log the refusal",
    );
    const s = await pair.gw.status();
    assert.is(s.volumes.length, before, "no volume registered for the intruder");
    assert.is(await lastSeq(), seqBefore);
    await intruder.proc.stop();
    const gwLog = pair.gw.proc.log;
    const refusal = gwLog.split("\n").find((l) =>
      l.includes("authentication failed") && l.includes("agent refused")
    );
    assert.ok(refusal, "refusal logged by the gateway");
    assert.match(refusal!, /"peer":/);
    for (const f of [wrong, pair.secret]) {
      const secret = (await Deno.readTextFile(f)).trim();
      assert.not.ok(gwLog.includes(secret), "the gateway log never contains a secret");
      assert.not.ok(intruder.proc.log.includes(secret), "the agent log never contains a secret");
      assert.not.ok(pair.agent.proc.log.includes(secret));
    }
    await stillServes();
  },
);

t.run();
