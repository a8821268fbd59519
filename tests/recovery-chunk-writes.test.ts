// A recovery's chunk writes at the agent, end to end, against a real agent process whose gateway
// is this test over TCP, so the chunks arrive sealed and are opened straight into the writers'
// buffers (the link's gateway end written from its description: tests/lib/link-client.ts):
// - unfenced, a write is refused with a clear error and the volume is left unchanged (and no
//   chunk writer starts for it);
// - fenced, the data plane's chunk writers write them: many in one batch (more than their
//   buffers), one chunk written twice lands in the order sent, every write is answered once;
// - once the fence is lifted, writes are refused again.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { randomBytes } from "node:crypto";
import { Agent, sparseImage, tempDir, writeSecret } from "./lib/cluster.ts";
import { writeAll } from "./lib/fuzz.ts";
import { batchFrames, frame, linkSecrets, sealBatch, unsealBatch } from "./lib/link-client.ts";
import { ConnReader } from "../src/io/conn-reader.ts";
import { readSecretFile } from "../src/wire/secret-file.ts";
import { decodeJson, decodeMixed, FrameType, jsonFrame, mixedFrame, readFrame } from "../src/wire/frames.ts";

const t = suite("recovery: chunk writes at the agent");
const KiB = 1024, MiB = 1024 * KiB;
const SIZE = MiB, CHUNK = 64 * KiB;

interface Reply {
  id: number;
  ok: boolean;
  error?: string;
}

/** The gateway's end of one agent's link: authenticates it, answers its Opens, sends it what a test wants. */
class TestGateway {
  private txCounter = 0n;
  private nextId = 1;
  private waiting = new Map<number, (r: Reply) => void>();
  /** Every ChunkReply the agent sent, by id (an id answered twice is a bug). */
  readonly answered = new Map<number, number>();

  private constructor(private readonly conn: Deno.Conn, private readonly txKey: Uint8Array) {}

  static async accept(listener: Deno.Listener, agent: string, secret: Uint8Array): Promise<TestGateway> {
    const conn = await listener.accept();
    const reader = new ConnReader(conn);
    const challenge = new Uint8Array(34);
    new DataView(challenge.buffer).setUint16(0, 2);
    const gwNonce = new Uint8Array(randomBytes(32));
    challenge.set(gwNonce, 2);
    await writeAll(conn, frame(FrameType.Challenge, challenge));
    const hello = await readFrame(reader);
    if (hello?.type !== FrameType.Hello) throw new Error(`expected a hello, got ${hello?.type}`);
    const b = hello.body, nameLen = b[2];
    const agentNonce = b.slice(3 + nameLen, 3 + nameLen + 32);
    const s = linkSecrets(secret, agent, gwNonce, agentNonce);
    assert.ok(same(b.slice(3 + nameLen + 32), s.agentProof), "the agent proves its secret");
    await writeAll(conn, frame(FrameType.Welcome, s.gatewayProof));
    const gw = new TestGateway(conn, s.gatewayKey);
    gw.read(reader, s.agentKey).catch(() => {});
    return gw;
  }

  private async read(reader: ConnReader, rxKey: Uint8Array): Promise<void> {
    for (let counter = 0n;; counter++) {
      if (!await reader.fill(4)) return;
      const lp = reader.take(4).slice();
      const sealed = await reader.readExact(new DataView(lp.buffer).getUint32(0) + 16);
      if (!sealed) return;
      for (const f of batchFrames(unsealBatch(rxKey, counter, lp, sealed))) {
        if (f.type === FrameType.Open) {
          // the gateway holds the volume as it is: nothing to resynchronise
          const { id } = decodeJson<{ id: number }>(f.body);
          await this.send(jsonFrame(FrameType.Opened, { id, lastSeq: 0, known: true, journalId: 1 }));
        } else if (f.type === FrameType.ChunkReply) {
          const r = decodeMixed<Reply>(f.body).header;
          this.answered.set(r.id, (this.answered.get(r.id) ?? 0) + 1);
          this.waiting.get(r.id)?.(r);
          this.waiting.delete(r.id);
        }
      }
    }
  }

  /** Sends frames in one sealed batch. */
  async send(...frames: Uint8Array[]): Promise<void> {
    const plain = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
    let at = 0;
    for (const f of frames) {
      plain.set(f, at);
      at += f.length;
    }
    await writeAll(this.conn, sealBatch(this.txKey, this.txCounter++, plain));
  }

  /** A recovery's write of one chunk of vol0: its frame, and its answer once it comes. */
  write(index: number, data: Uint8Array): { frame: Uint8Array; reply: Promise<Reply> } {
    const id = this.nextId++;
    const reply = new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no answer to the write of chunk ${index} (id ${id})`)),
        20_000,
      );
      this.waiting.set(id, (r) => {
        clearTimeout(timer);
        resolve(r);
      });
    });
    const f = mixedFrame(
      FrameType.ChunkOp,
      { op: "write", volume: "a1/vol0", kind: "lsp", chunkSize: CHUNK, index, id },
      data,
    );
    return { frame: f, reply };
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}

function filled(byte: number): Uint8Array {
  return new Uint8Array(CHUNK).fill(byte);
}

/** Threads of a process named as the agent's chunk writers (native/chunks.c). */
function chunkWriters(pid: number): number {
  let n = 0;
  for (const e of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      if (Deno.readTextFileSync(`/proc/${pid}/task/${e.name}/comm`).trim() === "cn-chunk-write") n++;
    } catch { /* ended */ }
  }
  return n;
}

async function chunkOf(path: string, index: number): Promise<Uint8Array> {
  return (await Deno.readFile(path)).slice(index * CHUNK, (index + 1) * CHUNK);
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

t(
  "unfenced, a recovery write is refused and the volume unchanged; fenced, the chunk writers write them in order",
  async () => {
    const dir = await tempDir("recovery-chunk-writes");
    const secretFile = `${dir}/agent.secret`;
    await writeSecret(secretFile);
    const image = await sparseImage(`${dir}/vol0.img`, SIZE);
    const original = new Uint8Array(SIZE).map((_, i) => (i * 7 + (i >> 12)) & 0xff);
    await Deno.writeFile(image, original);
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const accepted = TestGateway.accept(listener, "a1", readSecretFile(secretFile));
    const agent = new Agent({
      dir,
      id: "a1",
      secretFile,
      gatewayPort: (listener.addr as Deno.NetAddr).port,
      volumes: { vol0: image },
    });
    let gw: TestGateway | undefined;
    try {
      await agent.start();
      gw = await accepted;
      const pid = agent.proc.pid;

      // unfenced: refused, nothing written, no writer started for it
      const w0 = gw.write(3, filled(0xa1));
      await gw.send(w0.frame);
      const r0 = await w0.reply;
      assert.is(r0.ok, false, "an unfenced agent refuses a recovery write");
      assert.match(r0.error ?? "", /recovery writes need the volume fenced/);
      assert.ok(same(await Deno.readFile(image), original), "the volume is unchanged");
      assert.is(chunkWriters(pid), 0, "no chunk writer started for a refused write");

      // fenced: the data plane writes them
      await gw.send(jsonFrame(FrameType.Control, { type: "fence", reason: "recovering vol0" }));
      await agent.proc.waitForLog("fenced: volumes are read-only");
      // one batch of more writes than the writers have buffers, chunk 1 twice in it; then chunk 2
      // twice in two batches right after each other
      const batch = [
        gw.write(0, filled(0x10)),
        gw.write(1, filled(0x11)),
        ...Array.from({ length: 8 }, (_, k) => gw!.write(4 + k, filled(0x40 + k))),
        gw.write(1, filled(0x12)),
      ];
      const again = [gw.write(2, filled(0x20)), gw.write(2, filled(0x21))];
      await gw.send(...batch.map((w) => w.frame));
      await gw.send(again[0].frame);
      await gw.send(again[1].frame);
      const replies = await Promise.all([...batch, ...again].map((w) => w.reply));
      for (const r of replies) assert.ok(r.ok, `write ${r.id} answered ok (${r.error ?? ""})`);
      assert.ok([...gw.answered.values()].every((n) => n === 1), "every write answered once");
      assert.ok(same(await chunkOf(image, 0), filled(0x10)), "chunk 0 written");
      assert.ok(same(await chunkOf(image, 1), filled(0x12)), "chunk 1's second write landed last");
      assert.ok(same(await chunkOf(image, 2), filled(0x21)), "chunk 2's second write landed last");
      for (let k = 0; k < 8; k++) {
        assert.ok(same(await chunkOf(image, 4 + k), filled(0x40 + k)), `chunk ${4 + k} written`);
      }
      assert.ok(
        same(await chunkOf(image, 3), original.slice(3 * CHUNK, 4 * CHUNK)),
        "chunk 3 was never written",
      );
      assert.is(chunkWriters(pid), 2, "the data plane's chunk writers wrote them");

      // the fence lifted: refused again, the volume as the recovery left it
      const recovered = await Deno.readFile(image);
      await gw.send(jsonFrame(FrameType.Control, { type: "unfence" }));
      await agent.proc.waitForLog("fence lifted: volumes are writable");
      const w1 = gw.write(0, filled(0xee));
      await gw.send(w1.frame);
      const r1 = await w1.reply;
      assert.is(r1.ok, false, "a recovery write after the fence lifted is refused");
      assert.match(r1.error ?? "", /recovery writes need the volume fenced/);
      assert.ok(same(await Deno.readFile(image), recovered), "the volume is unchanged");
    } finally {
      gw?.close();
      await agent.proc?.stop();
      listener.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

t.run();
