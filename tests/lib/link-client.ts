// A test client of the agent ↔ gateway link, written from its description in
// native/seal.c and native/continuum.h (not from the data plane's code): the binary
// challenge-response, then AES-256-GCM sealed batches with per-direction counter nonces over
// TCP, or the same batches in clear and without a tag over a Unix socket.
// Tests use it to send exactly what they want (mutated records, wrong proofs, replays)
// to a live gateway and to read what it answers.
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from "node:crypto";
import { ConnReader } from "../../src/io/conn-reader.ts";
import { type Frame, FRAME_HEADER, FrameType } from "../../src/wire/frames.ts";
import { writeAll } from "./fuzz.ts";

export const LINK_VERSION = 2;
const enc = new TextEncoder();

function mac(secret: Uint8Array, label: string, agent: string, a: Uint8Array, b: Uint8Array): Uint8Array {
  return new Uint8Array(
    createHmac("sha256", secret).update(label).update(agent).update("/").update(a).update(b).digest(),
  );
}

/** The agent's proof, the gateway's, and the two session keys. */
export function linkSecrets(secret: Uint8Array, agent: string, gwNonce: Uint8Array, agentNonce: Uint8Array) {
  return {
    agentProof: mac(secret, "continuum-link-v2/agent/", agent, gwNonce, agentNonce),
    gatewayProof: mac(secret, "continuum-link-v2/gateway/", agent, agentNonce, gwNonce),
    agentKey: mac(secret, "continuum-link-v2/key/agent-to-gateway/", agent, gwNonce, agentNonce),
    gatewayKey: mac(secret, "continuum-link-v2/key/gateway-to-agent/", agent, gwNonce, agentNonce),
  };
}

export function frame(type: number, body: Uint8Array): Uint8Array {
  const b = new Uint8Array(FRAME_HEADER + body.length);
  new DataView(b.buffer).setUint32(0, 1 + body.length);
  b[4] = type;
  b.set(body, FRAME_HEADER);
  return b;
}

export function helloFrame(agent: string, agentNonce: Uint8Array, proof: Uint8Array): Uint8Array {
  const name = enc.encode(agent);
  const body = new Uint8Array(3 + name.length + 64);
  new DataView(body.buffer).setUint16(0, LINK_VERSION);
  body[2] = name.length;
  body.set(name, 3);
  body.set(agentNonce, 3 + name.length);
  body.set(proof, 3 + name.length + 32);
  return frame(FrameType.Hello, body);
}

function nonceOf(counter: bigint): Uint8Array {
  const iv = new Uint8Array(12);
  new DataView(iv.buffer).setBigUint64(4, counter);
  return iv;
}

/** Seals `plain` (frames laid end to end, or anything) as batch number `counter` under `key`. */
export function sealBatch(key: Uint8Array, counter: bigint, plain: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + plain.length + 16);
  new DataView(out.buffer).setUint32(0, plain.length);
  const c = createCipheriv("aes-256-gcm", key, nonceOf(counter));
  c.setAAD(out.subarray(0, 4));
  out.set(c.update(plain), 4);
  c.final();
  out.set(c.getAuthTag(), 4 + plain.length);
  return out;
}

/** A batch as it travels over a Unix socket: the length prefix, then the frames in clear. */
export function plainBatch(plain: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + plain.length);
  new DataView(out.buffer).setUint32(0, plain.length);
  out.set(plain, 4);
  return out;
}

/** Opens batch number `counter` sealed under `key` (lp: its length prefix; sealed: the rest, tag last); throws if not authentic. */
export function unsealBatch(
  key: Uint8Array,
  counter: bigint,
  lp: Uint8Array,
  sealed: Uint8Array,
): Uint8Array {
  const n = sealed.length - 16;
  const d = createDecipheriv("aes-256-gcm", key, nonceOf(counter));
  d.setAAD(lp);
  d.setAuthTag(sealed.subarray(n));
  const plain = new Uint8Array(d.update(sealed.subarray(0, n)));
  d.final();
  return plain;
}

/** The frames laid end to end in an unsealed batch. */
export function batchFrames(plain: Uint8Array): Frame[] {
  const out: Frame[] = [];
  for (let at = 0; at < plain.length;) {
    const len = new DataView(plain.buffer, plain.byteOffset + at, 4).getUint32(0);
    out.push({ type: plain[at + 4], body: plain.slice(at + 5, at + 4 + len) });
    at += 4 + len;
  }
  return out;
}

export class LinkClient {
  private txCounter = 0n;
  private rxCounter = 0n;
  private pending: Frame[] = [];

  private constructor(
    readonly conn: Deno.Conn,
    private readonly reader: ConnReader,
    private readonly txKey: Uint8Array,
    private readonly rxKey: Uint8Array,
    /** Over a Unix socket: batches in clear, no tag. */
    readonly plain: boolean,
  ) {}

  /** Reads the gateway's challenge: its nonce. */
  static async challenge(reader: ConnReader): Promise<Uint8Array> {
    if (!await reader.fill(FRAME_HEADER)) throw new Error("closed before the challenge");
    const h = reader.take(FRAME_HEADER);
    const len = new DataView(h.buffer, h.byteOffset, 4).getUint32(0);
    if (h[4] !== FrameType.Challenge) throw new Error(`expected a challenge, got frame type ${h[4]}`);
    const body = await reader.readExact(len - 1);
    if (!body || body.length !== 34) throw new Error("malformed challenge");
    return body.subarray(2);
  }

  /**
   * Connects (a Unix socket's path, or a TCP port on 127.0.0.1) and authenticates as `agent` with
   * `secret`; throws with the gateway's answer if refused.
   */
  static async connect(
    to: string | { port: number },
    agent: string,
    secret: Uint8Array,
  ): Promise<LinkClient> {
    const conn = typeof to === "string"
      ? await Deno.connect({ transport: "unix", path: to })
      : await Deno.connect({ hostname: "127.0.0.1", port: to.port });
    const reader = new ConnReader(conn);
    try {
      const gwNonce = await LinkClient.challenge(reader);
      const mine = new Uint8Array(randomBytes(32));
      const s = linkSecrets(secret, agent, gwNonce, mine);
      await writeAll(conn, helloFrame(agent, mine, s.agentProof));
      if (!await reader.fill(FRAME_HEADER)) throw new Error("closed during authentication");
      const h = reader.take(FRAME_HEADER);
      const len = new DataView(h.buffer, h.byteOffset, 4).getUint32(0);
      const body = (await reader.readExact(len - 1))!;
      if (h[4] === FrameType.Denied) throw new Error(`denied: ${new TextDecoder().decode(body)}`);
      if (h[4] !== FrameType.Welcome) throw new Error(`unexpected answer ${h[4]}`);
      if (!body.every((b, i) => b === s.gatewayProof[i])) throw new Error("the gateway's proof is wrong");
      return new LinkClient(conn, reader, s.agentKey, s.gatewayKey, typeof to === "string");
    } catch (e) {
      conn.close();
      throw e;
    }
  }

  /** `plain` as the next batch: sealed, or in clear over a Unix socket. */
  seal(plain: Uint8Array): Uint8Array {
    return this.plain ? plainBatch(plain) : sealBatch(this.txKey, this.txCounter++, plain);
  }

  async send(...frames: Uint8Array[]): Promise<void> {
    const total = frames.reduce((n, f) => n + f.length, 0);
    const plain = new Uint8Array(total);
    let at = 0;
    for (const f of frames) {
      plain.set(f, at);
      at += f.length;
    }
    await writeAll(this.conn, this.seal(plain));
  }

  /** The next frame from the gateway; undefined once it closed. */
  async next(): Promise<Frame | undefined> {
    while (this.pending.length === 0) {
      if (!await this.reader.fill(4)) return undefined;
      const lp = this.reader.take(4).slice();
      const n = new DataView(lp.buffer).getUint32(0);
      const batch = await this.reader.readExact(n + (this.plain ? 0 : 16));
      if (!batch) return undefined;
      this.pending.push(
        ...batchFrames(this.plain ? batch : unsealBatch(this.rxKey, this.rxCounter++, lp, batch)),
      );
    }
    return this.pending.shift();
  }

  /** Frames until the gateway closes (or timeoutMs passes). */
  async drain(timeoutMs: number): Promise<{ frames: Frame[]; timedOut: boolean }> {
    const frames: Frame[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), timeoutMs));
    try {
      while (true) {
        const f = await Promise.race([this.next().catch(() => undefined), timeout]);
        if (f === "timeout") return { frames, timedOut: true };
        if (!f) return { frames, timedOut: false };
        frames.push(f);
      }
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}
