// A small NBD client for tests that need to send exactly what they want (bad
// requests, a payload cut short) or to know precisely which writes completed.
import { ConnReader } from "../../src/io/conn-reader.ts";
import {
  CMD_DISC,
  CMD_FLAG_FUA,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  encodeRequest,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  IHAVEOPT,
  INFO_BLOCK_SIZE,
  OPT_GO,
  REP_ACK,
  REP_INFO,
  type Request,
  SIMPLE_REPLY_MAGIC,
} from "./nbd-protocol.ts";

export class NbdReplyError extends Error {
  constructor(readonly code: number) {
    super(`NBD error ${code}`);
  }
}

export function optionFrame(option: number, data: Uint8Array): Uint8Array {
  const b = new Uint8Array(16 + data.length);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, IHAVEOPT);
  v.setUint32(8, option);
  v.setUint32(12, data.length);
  b.set(data, 16);
  return b;
}

export function goData(name: string): Uint8Array {
  const n = new TextEncoder().encode(name);
  const b = new Uint8Array(4 + n.length + 2 + 2);
  const v = new DataView(b.buffer);
  v.setUint32(0, n.length);
  b.set(n, 4);
  v.setUint16(4 + n.length, 1);
  v.setUint16(6 + n.length, INFO_BLOCK_SIZE);
  return b;
}

export interface OptionReply {
  option: number;
  type: number;
  data: Uint8Array;
}

export class NbdClient {
  size = 0;
  flags = 0;
  private reader: ConnReader;
  private nextHandle = 1n;
  private waiting = new Map<
    bigint,
    { len: number; resolve: (d: Uint8Array) => void; reject: (e: Error) => void }
  >();
  private readLoop: Promise<void> | undefined;
  private disconnecting = false;
  private writes: Promise<void> = Promise.resolve();
  closedError: Error | undefined;
  private ended: Error | undefined;

  private constructor(readonly conn: Deno.Conn) {
    this.reader = new ConnReader(conn);
  }

  static async connect(socket: string): Promise<NbdClient> {
    return new NbdClient(await Deno.connect({ transport: "unix", path: socket }));
  }

  /** Writes b after everything written before it (concurrent writes would interleave on the socket). */
  writeAll(b: Uint8Array): Promise<void> {
    const w = this.writes.then(async () => {
      let at = 0;
      while (at < b.length) at += await this.conn.write(b.subarray(at));
    });
    this.writes = w.catch(() => {});
    return w;
  }

  /** Reads the server greeting and sends the client flags. */
  async greet(flags = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES): Promise<void> {
    if (!await this.reader.fill(18)) throw new Error("no greeting");
    this.reader.take(18);
    const f = new Uint8Array(4);
    new DataView(f.buffer).setUint32(0, flags);
    await this.writeAll(f);
  }

  async option(option: number, data: Uint8Array): Promise<OptionReply> {
    await this.writeAll(optionFrame(option, data));
    return await this.readOptionReply();
  }

  async readOptionReply(): Promise<OptionReply> {
    if (!await this.reader.fill(20)) throw new Error("connection closed during negotiation");
    const h = this.reader.take(20);
    const v = new DataView(h.buffer, h.byteOffset, 20);
    const option = v.getUint32(8), type = v.getUint32(12), len = v.getUint32(16);
    const data = len > 0 ? (await this.reader.readExact(len))! : new Uint8Array(0);
    return { option, type, data };
  }

  /** Full handshake with NBD_OPT_GO; throws with the error reply type on refusal. */
  async go(name: string): Promise<void> {
    await this.greet();
    await this.writeAll(optionFrame(OPT_GO, goData(name)));
    while (true) {
      const r = await this.readOptionReply();
      if (r.type === REP_INFO) {
        const dv = new DataView(r.data.buffer, r.data.byteOffset, r.data.length);
        if (dv.getUint16(0) === 0) {
          this.size = Number(dv.getBigUint64(2));
          this.flags = dv.getUint16(10);
        }
      } else if (r.type === REP_ACK) {
        break;
      } else {
        throw new Error(`option refused: type 0x${r.type.toString(16)} ${new TextDecoder().decode(r.data)}`);
      }
    }
    this.readLoop = this.replies();
  }

  private async replies(): Promise<void> {
    try {
      while (true) {
        if (!await this.reader.fill(16)) throw new Error("server closed the connection");
        const h = this.reader.take(16);
        const v = new DataView(h.buffer, h.byteOffset, 16);
        if (v.getUint32(0) !== SIMPLE_REPLY_MAGIC) throw new Error("bad reply magic");
        const error = v.getUint32(4);
        const handle = v.getBigUint64(8);
        const w = this.waiting.get(handle);
        if (!w) throw new Error(`reply for unknown handle ${handle}`);
        this.waiting.delete(handle);
        if (error) {
          w.reject(new NbdReplyError(error));
          continue;
        }
        w.resolve(w.len > 0 ? (await this.reader.readExact(w.len))! : new Uint8Array(0));
      }
    } catch (e) {
      this.ended = e as Error;
      if (!this.disconnecting) this.closedError = e as Error;
      for (const w of this.waiting.values()) w.reject(e as Error);
      this.waiting.clear();
    }
  }

  /** Sends a request (with payload for writes) and resolves with the reply data. */
  request(r: Omit<Request, "handle">, payload?: Uint8Array, replyLen = 0): Promise<Uint8Array> {
    // no reply can come once the reply loop ended: a request then would wait forever
    if (this.ended) return Promise.reject(this.ended);
    const handle = this.nextHandle++;
    const p = new Promise<Uint8Array>((resolve, reject) =>
      this.waiting.set(handle, { len: replyLen, resolve, reject })
    );
    const head = encodeRequest({ ...r, handle });
    const msg = payload ? new Uint8Array(head.length + payload.length) : head;
    if (payload) {
      msg.set(head);
      msg.set(payload, head.length);
    }
    this.writeAll(msg).catch((e) => {
      const w = this.waiting.get(handle);
      this.waiting.delete(handle);
      w?.reject(e);
    });
    return p;
  }

  /**
   * Sends requests in one socket write, so the server finds them read together (a burst); the
   * last one's payload may be cut at `holdLast` bytes, its rest sent by the returned `rest`.
   */
  burst(
    reqs: { type: number; offset: number; length: number; data?: Uint8Array; replyLen?: number }[],
    holdLast?: number,
  ): { replies: Promise<Uint8Array>[]; rest: () => Promise<void> } {
    const parts: Uint8Array[] = [];
    const replies = reqs.map((r) => {
      const handle = this.nextHandle++;
      parts.push(encodeRequest({ flags: 0, type: r.type, offset: r.offset, length: r.length, handle }));
      if (r.data) parts.push(r.data);
      return new Promise<Uint8Array>((resolve, reject) =>
        this.waiting.set(handle, { len: r.replyLen ?? 0, resolve, reject })
      );
    });
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    parts.reduce((at, p) => (all.set(p, at), at + p.length), 0);
    const cut = holdLast === undefined
      ? all.length
      : all.length - reqs[reqs.length - 1].data!.length + holdLast;
    const sent = this.writeAll(all.subarray(0, cut));
    return { replies, rest: async () => (await sent, await this.writeAll(all.subarray(cut))) };
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.request({ flags: 0, type: CMD_READ, offset, length }, undefined, length);
  }

  async write(offset: number, data: Uint8Array, fua = false): Promise<void> {
    await this.request({ flags: fua ? CMD_FLAG_FUA : 0, type: CMD_WRITE, offset, length: data.length }, data);
  }

  async flush(): Promise<void> {
    await this.request({ flags: 0, type: CMD_FLUSH, offset: 0, length: 0 });
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.request({ flags: 0, type: CMD_TRIM, offset, length });
  }

  async zero(offset: number, length: number): Promise<void> {
    await this.request({ flags: 0, type: CMD_WRITE_ZEROES, offset, length });
  }

  async disconnect(): Promise<void> {
    this.disconnecting = true;
    await this.writeAll(encodeRequest({ flags: 0, type: CMD_DISC, handle: 0n, offset: 0, length: 0 })).catch(
      () => {},
    );
    await this.readLoop?.catch(() => {});
    this.close();
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}
