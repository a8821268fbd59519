// The gateway's side of the agents' links. The data plane (native/gateway.c) authenticates
// each agent by its secret, verifies every record (checksums, sequence, bounds, fence),
// appends it to the journal and acknowledges it accepted, then durable once committed. This
// class registers the volumes agents announce (the database, the mirror's image, the
// tasks' bounds), carries the control plane's messages, a recovery's chunk operations, and
// a remote site's stream to its standby agents.
import { logger } from "../log.ts";
import { cstr, fromCstr, native, NativeError } from "../native/ffi.ts";
import { Ev, eventJson, FL_SENT, type NativeEvent, Plane } from "../native/plane.ts";
import { Changes } from "../io/changes.ts";
import { type Address, formatAddress } from "./address.ts";
import {
  ChunkLink,
  type ChunkReply,
  type ChunkStore,
  type CopiedChunk,
  type CopyKind,
  LinkDown,
  type LocalFile,
  SourceReadError,
} from "../recovery/chunk-ops.ts";
import { decodeJson, decodeMixed, type Frame, FrameType, jsonFrame } from "../wire/frames.ts";
import { parseFrame } from "../wire/site-frames.ts";
import { z } from "zod";
import type { Journal, VolumeInfo } from "../journal/journal.ts";
import type { Channel } from "../replication/sender.ts";
import { type AgentOrder, name64, type StandbyOrder } from "../wire/control.ts";

const log = logger("ingest");
const noBody = new Uint8Array(0);

export interface GatewayListenerOptions {
  listen: Address[];
  journal: Journal;
  /** The secret of each agent allowed to connect. */
  secrets: Map<string, Uint8Array>;
  /** Where a new volume's mirror image goes. */
  mirrorPath: (agent: string, volume: string) => string;
  /** Called once a volume is open (the mirror applier prepares its image). */
  onVolume?: (v: VolumeInfo) => Promise<void> | void;
  onControl?: (agent: string, msg: unknown, reply: (m: unknown) => void) => void;
  /** Standby servers (at a remote site): they receive the stream instead of sending one. */
  standby?: StandbyHandler;
  /** An agent authenticated (its fence state, for instance, is told again). */
  onAgent?: (agent: string) => void;
  /** Why an agent may not write now (its service runs at another site), if so: its records are refused. */
  fenced?: (agent: string) => string | undefined;
  handshakeTimeoutMs?: number;
}

/** What the listener tells of its agents. */
export type ListenerHandlers = Pick<
  GatewayListenerOptions,
  "onVolume" | "onControl" | "standby" | "onAgent" | "fenced"
>;

/** What a remote gateway does with standby agents. */
export interface StandbyHandler {
  /** A standby volume was announced; resolves with the journal's id for it. */
  open(agent: string, m: { name: string; size: number; lastSeq: number; state: string }): Promise<number>;
  /** Every volume is announced: start streaming to the agent. */
  ready(agent: string, channel: Channel): void;
  /** Acknowledgements, hashes and pongs from the agent. */
  frame(agent: string, f: Frame): void;
  closed(agent: string): void;
}

interface Session {
  id: number;
  agent: string;
  chunks: ChunkLink;
  /** Copy orders in flight in the data plane (cn_gateway_copy), by order id. */
  copies: Map<number, CopyOrder>;
  /** Callers waiting for one of the session's order slots. */
  slotWaiters: (() => void)[];
}

/** A copy order: its chunks' outcomes come as Copied events. */
interface CopyOrder {
  left: number;
  chunkSize: number;
  size: number;
  done: CopiedChunk;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
  timedOut: () => void;
}

/** Chunks per copy order (the data plane takes up to 64), and the wait for a chunk's answer. */
const COPY_ORDER_MAX = 64;
const COPY_TIMEOUT_MS = 120_000;
const EBUSY = 16, ENOTCONN = 107;

/**
 * An agent announcing a volume on its link (an Open frame): a captured volume (native/agent.c) by
 * its link id, name and size; a standby's copy (src/capture/native-agent.ts) also with its state.
 */
export const openSchema = z.object({
  id: z.number().int().nonnegative().max(0xffffffff),
  name: name64,
  size: z.number().int().positive(),
  standby: z.boolean().optional(),
  lastSeq: z.number().int().nonnegative().optional(),
  state: z.enum(["empty", "consistent", "inconsistent"]).optional(),
});
export type OpenMessage = z.infer<typeof openSchema>;

const consumed = () => true;

export class GatewayListener {
  private readonly plane: Plane;
  readonly ptr: Deno.PointerValue;
  private sessions = new Map<number, Session>();
  /** The session of each agent (the newest). */
  private byAgent = new Map<string, Session>();
  private closed = false;
  private nextOrder = 0;
  readonly addresses: Address[] = [];
  /** Refused connections, by reason (for status and tests). */
  readonly refused = new Map<string, number>();
  /** A session's queued frames were taken for sending, or a session ended: its queue may be shorter. */
  private readonly sent = new Changes();

  private constructor(private o: GatewayListenerOptions) {
    this.plane = new Plane();
    this.ptr = native().cn_gateway_new(this.plane.ptr, o.journal.ptr, o.handshakeTimeoutMs ?? 10_000);
    for (const [agent, secret] of o.secrets) {
      native().cn_gateway_secret(this.ptr, cstr(agent), secret, secret.length);
    }
    this.plane
      .on(Ev.Session, (e) => this.onSession(e))
      .on(Ev.Refused, (e) => {
        const reason = new TextDecoder().decode(e.body);
        this.refused.set(reason, (this.refused.get(reason) ?? 0) + 1);
      })
      .on(Ev.Frame, (e) => this.onFrame(e))
      .on(Ev.Copied, (e) => this.onCopied(e))
      .on(Ev.Flags, (e) => {
        if (e.aux & FL_SENT) this.sent.notify();
      });
  }

  static async listen(o: GatewayListenerOptions): Promise<GatewayListener> {
    const g = new GatewayListener(o);
    await g.accept();
    return g;
  }

  /**
   * The gateway's data plane, not accepting agents yet: fences set now hold from the first
   * session, and whoever handles the agents can be built with it before accept().
   */
  static create(o: GatewayListenerOptions): GatewayListener {
    return new GatewayListener(o);
  }

  /** Accepts agents on the options' addresses; `handlers` (the options' otherwise) hear of them. */
  async accept(handlers: ListenerHandlers = {}): Promise<void> {
    this.o = { ...this.o, ...handlers };
    try {
      for (const a of this.o.listen) {
        const port = new Int32Array(1);
        const err = new Uint8Array(512);
        const r = await native().cn_gateway_listen(
          this.ptr,
          cstr(formatAddress(a)),
          new Uint8Array(port.buffer),
          err,
          BigInt(err.length),
        );
        if (r < 0) throw new Error(fromCstr(err));
        this.addresses.push(a.transport === "tcp" ? { ...a, port: port[0] } : a);
      }
    } catch (e) {
      await this.close();
      throw e;
    }
  }

  /** Chunk operations on an agent's volumes (recovery), if it is connected. */
  chunks(agent: string): ChunkLink | undefined {
    return this.byAgent.get(agent)?.chunks;
  }

  /**
   * An agent's copy of a volume (`volume`: agent/name) for chunk operations, if the agent is
   * connected: those of its ChunkLink, and copyFrom done by the data plane.
   */
  store(agent: string, volume: string, kind: CopyKind): ChunkStore | undefined {
    const s = this.byAgent.get(agent);
    if (!s) return undefined;
    return {
      ...s.chunks.store(volume, kind),
      copyFrom: (file, chunkSize, indexes, done) =>
        this.copy(s, volume, kind, file, chunkSize, indexes, done),
    };
  }

  /** Chunks of a local file to an agent's copy, read, hashed, sealed and sent by the session's sender. */
  private async copy(
    s: Session,
    volume: string,
    kind: CopyKind,
    file: LocalFile,
    chunkSize: number,
    indexes: readonly number[],
    done: CopiedChunk,
  ): Promise<void> {
    const orders: Promise<void>[] = [];
    for (let k = 0; k < indexes.length; k += COPY_ORDER_MAX) {
      orders.push(
        this.copyOrder(s, volume, kind, file, chunkSize, indexes.slice(k, k + COPY_ORDER_MAX), done),
      );
    }
    // the first failure is the answer; the others are seen, not left unhandled
    for (const o of orders) o.catch(() => {});
    await Promise.all(orders);
  }

  private async copyOrder(
    s: Session,
    volume: string,
    kind: CopyKind,
    file: LocalFile,
    chunkSize: number,
    list: readonly number[],
    done: CopiedChunk,
  ): Promise<void> {
    for (;;) {
      if (this.closed || this.sessions.get(s.id) !== s) throw new LinkDown(`agent ${s.agent} disconnected`);
      const order = this.nextOrder = (this.nextOrder + 1) >>> 0;
      const idx = new Uint32Array(list);
      const r = native().cn_gateway_copy(
        this.ptr,
        s.id,
        order,
        file.fd,
        BigInt(file.size),
        BigInt(chunkSize),
        cstr(volume),
        cstr(kind),
        new Uint8Array(idx.buffer),
        list.length,
      );
      if (r === -EBUSY) {
        await new Promise<void>((res) => s.slotWaiters.push(res));
        continue;
      }
      if (r === -ENOTCONN) throw new LinkDown(`agent ${s.agent} disconnected`);
      if (r < 0) throw new NativeError("copy", -r);
      return await new Promise<void>((resolve, reject) => {
        const timedOut = () => {
          this.endOrder(s, order);
          reject(
            new Error(
              `no answer to a chunk write on the ${kind} copy of ${volume} within ${COPY_TIMEOUT_MS} ms`,
            ),
          );
        };
        s.copies.set(order, {
          left: list.length,
          chunkSize,
          size: file.size,
          done,
          resolve,
          reject,
          timer: setTimeout(timedOut, COPY_TIMEOUT_MS),
          timedOut,
        });
      });
    }
  }

  /** Forgets an order (settled, failed or given up); a caller waiting for a slot may try again. */
  private endOrder(s: Session, order: number): void {
    const o = s.copies.get(order);
    if (!o) return;
    clearTimeout(o.timer);
    s.copies.delete(order);
    s.slotWaiters.shift()?.();
  }

  private onCopied(e: NativeEvent): void {
    const s = this.sessions.get(e.source);
    const o = s?.copies.get(e.aux);
    if (!s || !o) return;
    const dv = new DataView(e.body.buffer, e.body.byteOffset, e.body.length);
    const index = dv.getUint32(0), status = dv.getInt32(4);
    if (status !== 0) {
      this.endOrder(s, e.aux);
      const reason = new TextDecoder().decode(e.body.subarray(24));
      o.reject(status < 0 ? new SourceReadError(reason) : new Error(reason));
      return;
    }
    clearTimeout(o.timer);
    o.timer = setTimeout(o.timedOut, COPY_TIMEOUT_MS);
    o.done(index, e.body.slice(8, 24), Math.min(o.chunkSize, o.size - index * o.chunkSize));
    if (--o.left === 0) {
      this.endOrder(s, e.aux);
      o.resolve();
    }
  }

  /** The session ended: its copy orders fail (the chunks may be copied again on the next one). */
  private failCopies(s: Session): void {
    for (const [order, o] of [...s.copies]) {
      this.endOrder(s, order);
      o.reject(new LinkDown(`agent ${s.agent} disconnected`));
    }
    for (const w of s.slotWaiters.splice(0)) w();
  }

  connectedAgents(): string[] {
    return [...this.byAgent.keys()];
  }

  private send(s: Session, frame: Uint8Array, body?: Uint8Array): boolean {
    if (this.closed) return false;
    const b = body ?? noBody;
    const r = native().cn_gateway_send(this.ptr, s.id, frame, BigInt(frame.length), b, BigInt(b.length));
    // a malformed frame is this process's bug: it must not vanish silently
    if (r === -22) throw new Error(`a malformed frame (type ${frame[4]}) was queued for agent ${s.agent}`);
    return r === 0;
  }

  /** Queues a record of this listener's journal by reference (Channel.sendStored). */
  private sendStored(s: Session, pos: number, length: number): boolean {
    if (this.closed) return false;
    const r = native().cn_gateway_send_stored(this.ptr, s.id, BigInt(pos), BigInt(length));
    if (r === -22) throw new Error(`a record of length ${length} at ${pos} was queued for agent ${s.agent}`);
    return r === 0;
  }

  /** Sends a control message to a connected agent; false if it is not connected. */
  sendControl(agent: string, msg: AgentOrder | StandbyOrder): boolean {
    const s = this.byAgent.get(agent);
    return s !== undefined && this.send(s, jsonFrame(FrameType.Control, msg));
  }

  /** An agent's writes are refused from now on (its service runs elsewhere), or taken again. */
  setFence(agent: string, reason: string | undefined): void {
    if (this.closed) return;
    native().cn_gateway_fence(this.ptr, cstr(agent), cstr(reason ?? ""));
  }

  private onSession(e: NativeEvent): void {
    const m = eventJson<{ agent: string; peer?: string; reason?: string }>(e);
    if (e.aux === 1) {
      const s: Session = {
        id: e.source,
        agent: m.agent,
        chunks: new ChunkLink((head, payload) => this.send(s, head, payload)),
        copies: new Map(),
        slotWaiters: [],
      };
      this.sessions.set(s.id, s);
      this.byAgent.set(s.agent, s);
      // before the agent can open a volume, its fence holds in the data plane
      this.setFence(s.agent, this.o.fenced?.(s.agent));
      this.o.onAgent?.(s.agent);
      return;
    }
    const s = this.sessions.get(e.source);
    if (!s) return;
    this.sessions.delete(s.id);
    this.sent.notify();
    if (m.reason) log.debug("agent session ended", { agent: s.agent, reason: m.reason });
    s.chunks.fail(new Error(`agent ${s.agent} disconnected`));
    this.failCopies(s);
    if (this.byAgent.get(s.agent) === s) {
      this.byAgent.delete(s.agent);
      this.o.standby?.closed(s.agent);
    }
  }

  private async onFrame(e: NativeEvent): Promise<void> {
    const s = this.sessions.get(e.source);
    if (!s) return;
    const body = e.body.slice();
    switch (e.aux) {
      case FrameType.Open:
        return await this.open(s, body);
      case FrameType.ChunkReply: {
        const m = decodeMixed<ChunkReply>(body);
        s.chunks.answer(m.header, m.payload);
        return;
      }
      case FrameType.Accepted:
      case FrameType.Hashes:
      case FrameType.Pong:
        this.o.standby?.frame(s.agent, { type: e.aux, body });
        return;
      case FrameType.Control: {
        let m: { type?: string } | null;
        try {
          m = decodeJson(body);
        } catch (e) {
          // refused like a malformed message (src/wire/control.ts): logged, the link stays up
          log.error("control message refused", { from: s.agent, error: (e as Error).message });
          return;
        }
        if (m?.type === "standby-ready" && this.o.standby) {
          const ptr = this.ptr, id = s.id, closed = () => this.closed;
          this.o.standby.ready(s.agent, {
            send: (b, body) => this.send(s, b, body),
            sendStored: (pos, length) => this.sendStored(s, pos, length),
            // the data plane copies a frame as it is queued
            mark: () => consumed,
            get pending() {
              return closed() ? 0 : Math.max(0, Number(native().cn_gateway_queued(ptr, id)));
            },
            drained: (signal) => this.sent.next(undefined, signal),
          });
        } else {
          this.o.onControl?.(s.agent, m, (r) => this.send(s, jsonFrame(FrameType.Control, r)));
        }
      }
    }
  }

  private async open(s: Session, body: Uint8Array): Promise<void> {
    let raw: { id?: unknown } | null | undefined;
    let m: OpenMessage;
    try {
      raw = decodeJson(body);
      m = parseFrame(openSchema, "volume description", raw);
    } catch (e) {
      // answered by its id when it has one the agent can know it by
      const id = openSchema.shape.id.safeParse(raw?.id).data ?? null;
      log.warn("volume refused", { agent: s.agent, error: (e as Error).message });
      return void this.send(s, jsonFrame(FrameType.Opened, { id, error: (e as Error).message }));
    }
    const { id, name, size } = m;
    const refuse = (error: string) => this.send(s, jsonFrame(FrameType.Opened, { id, error }));
    if (m.standby === true) {
      if (!this.o.standby) return void refuse("this gateway does not feed standby servers");
      try {
        const journalId = await this.o.standby.open(s.agent, {
          name,
          size,
          lastSeq: m.lastSeq ?? 0,
          state: m.state ?? "empty",
        });
        this.send(s, jsonFrame(FrameType.Opened, { id, journalId }));
      } catch (e) {
        log.error("standby volume refused", { agent: s.agent, volume: name, error: e });
        refuse((e as Error).message);
      }
      return;
    }
    try {
      const v = await this.o.journal.registerVolume(s.agent, name, size, this.o.mirrorPath(s.agent, name));
      await this.o.onVolume?.(v);
      const known = v.known;
      v.known = true;
      // the data plane answers Opened (with the journal's last sequence) and takes the records
      if (this.closed) return;
      const r = native().cn_gateway_open_volume(
        this.ptr,
        s.id,
        id,
        v.id,
        BigInt(size),
        known ? 1 : 0,
        cstr(name),
      );
      if (r < 0) return;
      log.info("volume opened", {
        agent: s.agent,
        volume: name,
        lastSeq: this.o.journal.volume(v.id)?.lastSeq,
        known,
      });
    } catch (e) {
      log.error("volume refused", { agent: s.agent, volume: name, error: e });
      refuse((e as Error).message);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.sent.notify();
    await native().cn_gateway_close(this.ptr);
    await this.plane.close();
    native().cn_gateway_free(this.ptr);
    for (const s of this.sessions.values()) {
      s.chunks.fail(new Error(`agent ${s.agent} disconnected`));
      this.failCopies(s);
    }
  }

  describe(): string[] {
    return this.addresses.map(formatAddress);
  }
}
