// The agent's data plane (native/agent.c, native/capture.c): the sealed link to the local
// gateway and the captured volumes on it. Every write of a captured volume is sequenced,
// sent and applied to the local disk on native threads; this class configures them and
// turns what they report into calls: control messages, frames for a standby's copies,
// the link going up and down, a volume accepted or refused by the gateway.
import { logger } from "../log.ts";
import { check, cstr, fromCstr, native, NativeError } from "../native/ffi.ts";
import { Ev, eventJson, type NativeEvent, Plane } from "../native/plane.ts";
import { type Address, formatAddress } from "../link/address.ts";
import { decodeJson, type Frame, FrameType, jsonFrame } from "../wire/frames.ts";
import type { AgentReport, StandbyReport } from "../wire/control.ts";

const log = logger("agent");

export type GatewayLossPolicy = "block" | "track";

/** What the gateway says of a volume announced on the link. */
export interface OpenedInfo {
  /** Highest sequence number the gateway's journal holds for the volume. */
  lastSeq: number;
  /** False when the gateway had never seen the volume: it needs a full copy. */
  known: boolean;
  /** The gateway's id of the volume (records streamed to a standby name it). */
  journalId: number;
}

/** A volume announced by TypeScript (a standby's copy): it receives a stream, it sends none. */
export interface LinkVolume {
  readonly linkId: number;
  readonly name: string;
  readonly size: number;
  /** Extra fields of the Open message (a standby copy reports its position and state). */
  openFields(): Record<string, unknown>;
  onOpened(info: OpenedInfo): void;
  onRefused(message: string): void;
}

export interface NativeAgentOptions {
  gateway: Address;
  agent: string;
  secret: Uint8Array;
  onGatewayLoss: GatewayLossPolicy;
  /** In `block` mode, how long a request waits for an absent gateway before failing. */
  gatewayTimeoutMs: number;
  /** Records kept per volume until the gateway has them durably; beyond this, clients wait. */
  maxUnconfirmedBytes: number;
  handshakeTimeoutMs?: number;
  /** Control messages from the gateway (the control plane). */
  onControl?: (msg: unknown) => void;
  /** Frames the data plane does not handle itself (a recovery's chunk operations, a standby's hash requests), in order. */
  onFrame?: (f: Frame) => Promise<void> | void;
  /** After every (re)connection, once every volume is announced. */
  onConnected?: () => void;
}

/** A volume whose writes are captured; its NBD export is made by the NBD server. */
export class ProtectedVolume {
  private answer!: (e?: Error) => void;
  private answered = false;
  /** Settles with the gateway's first answer to this volume: accepted, or refused (rejects). */
  readonly opened = new Promise<void>((resolve, reject) => {
    this.answer = (e) => {
      if (this.answered) return;
      this.answered = true;
      if (e) reject(e);
      else resolve();
    };
  });
  private closed = false;

  constructor(
    private readonly agent: NativeAgent,
    readonly linkId: number,
    readonly name: string,
    readonly size: number,
    /** The gateway refused the volume after it had accepted it once: the agent cannot go on serving it. */
    private readonly onFatal: (e: Error) => void,
    /** Bytes a dirty-map bit covers. */
    private readonly dirtyChunk: number,
  ) {
    this.opened.catch(() => {}); // awaited by whoever needs it
  }

  /** @internal the gateway's answer, from the agent's events */
  gatewaySaid(kind: "opened" | "refused" | "fatal", error?: string): void {
    if (kind === "opened") return this.answer();
    const e = new Error(`gateway refused volume ${this.name}: ${error}`);
    if (kind === "fatal") this.onFatal(e);
    this.answer(e);
  }

  /**
   * Resolves true once quiescent (nothing waits, the link is up and the gateway holds every
   * record durably), false if it is not within `ms`.
   */
  async quiescence(ms: number): Promise<boolean> {
    if (this.closed || !this.agent.open) return false;
    return await native().cn_agent_volume_wait_quiet(this.agent.ptr, this.linkId, ms) === 1;
  }

  /**
   * The dirty map: chunks (of `chunkSize` bytes) this copy may differ in from the gateway's
   * (or, for a sticky map, that were written since the map was last cleared).
   */
  dirty(): { chunkSize: number; chunks: number[] } {
    if (this.closed || !this.agent.open) throw new Error(`volume ${this.name} is not captured`);
    const chunks = Math.ceil(this.size / this.dirtyChunk);
    const bits = new Uint8Array(Math.ceil(chunks / 8));
    const chunk = new BigUint64Array(1);
    const n = native().cn_agent_volume_dirty(
      this.agent.ptr,
      this.linkId,
      bits,
      BigInt(bits.length),
      new Uint8Array(chunk.buffer),
    );
    if (n < 0) throw new NativeError(`dirty map of ${this.name}`, Number(-n), "unknown volume");
    return { chunkSize: Number(chunk[0]), chunks: setBits(bits, chunks) };
  }

  /**
   * Stops capturing (the NBD export is withdrawn first): waits (bounded) for the gateway to
   * hold everything, syncs the disk, and clears the dirty map when both sides provably agree,
   * so the next start needs no resynchronisation.
   */
  async close(waitMs = 10_000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.agent.removeVolume(this, waitMs);
  }
}

export class NativeAgent {
  readonly ptr: Deno.PointerValue;
  private readonly plane: Plane;
  private volumes = new Map<number, ProtectedVolume>();
  private announced = new Map<number, LinkVolume>();
  private connected = false;
  private closed = false;

  constructor(private readonly o: NativeAgentOptions) {
    this.plane = new Plane();
    const err = new Uint8Array(512);
    this.ptr = native().cn_agent_new(
      this.plane.ptr,
      cstr(o.agent),
      o.secret,
      o.secret.length,
      cstr(formatAddress(o.gateway)),
      o.onGatewayLoss === "track" ? 1 : 0,
      BigInt(o.gatewayTimeoutMs),
      BigInt(o.maxUnconfirmedBytes),
      o.handshakeTimeoutMs ?? 10_000,
      err,
      BigInt(err.length),
    );
    if (!this.ptr) {
      this.plane.close();
      throw new Error(fromCstr(err) || "cannot start the agent's data plane");
    }
    this.plane
      .on(Ev.Link, (e) => this.onLink(e))
      .on(Ev.Volume, (e) => this.onVolume(e))
      .on(Ev.Frame, (e) => this.onFrame(e));
  }

  get up(): boolean {
    return this.connected;
  }

  /** False once closed: the data plane's agent is gone. */
  get open(): boolean {
    return !this.closed;
  }

  /** Starts connecting to the gateway (and reconnecting, with backoff, from then on). */
  start(): void {
    check("start the agent's link", native().cn_agent_start(this.ptr));
  }

  /** Reconnect now instead of waiting out the backoff. */
  poke(): void {
    native().cn_agent_poke(this.ptr);
  }

  /**
   * Captures a volume: `dirty` keeps the map as found, clears it (`equal`: the gateway's copy is
   * known equal), or sets every chunk (`unknown`); a `sticky` map is never cleared afterwards.
   */
  async addVolume(
    v: { linkId: number; name: string; fd: number; size: number },
    dirty: { path: string; chunk: number; mode: "keep" | "equal" | "unknown"; sticky?: boolean },
    onFatal: (e: Error) => void,
  ): Promise<ProtectedVolume> {
    if (this.closed) throw new Error("the agent is stopping");
    const pv = new ProtectedVolume(this, v.linkId, v.name, v.size, onFatal, dirty.chunk);
    this.volumes.set(v.linkId, pv);
    const err = new Uint8Array(512);
    const r = await native().cn_agent_add_volume(
      this.ptr,
      v.linkId,
      cstr(v.name),
      v.fd,
      BigInt(v.size),
      cstr(dirty.path),
      BigInt(dirty.chunk),
      { keep: 0, equal: 1, unknown: 2 }[dirty.mode] | (dirty.sticky ? DIRTY_STICKY : 0),
      err,
      BigInt(err.length),
    );
    if (r < 0) {
      this.volumes.delete(v.linkId);
      throw new NativeError(`volume ${v.name}`, -r, fromCstr(err));
    }
    return pv;
  }

  /** @internal see ProtectedVolume.close */
  async removeVolume(pv: ProtectedVolume, waitMs: number): Promise<void> {
    if (this.closed) return;
    await native().cn_agent_remove_volume(this.ptr, pv.linkId, waitMs);
    this.volumes.delete(pv.linkId);
  }

  /** Makes every captured volume read-only (the service runs at another site), or writable again. */
  fence(reason: string | undefined): void {
    if (this.closed) return;
    native().cn_agent_fence(this.ptr, cstr(reason ?? ""));
  }

  /**
   * The link thread writes a recovery's chunks into the captured volumes itself while the agent
   * is fenced (the rebuild of a primary's disk), instead of handing each chunk to TypeScript.
   */
  serveChunkWrites(): void {
    if (!this.closed) native().cn_agent_serve_chunk_writes(this.ptr, 1);
  }

  /** Announces a standby's copy (now if connected, and after every reconnection). */
  announce(v: LinkVolume): void {
    this.announced.set(v.linkId, v);
    if (this.connected) this.send(openFrame(v));
  }

  withdraw(linkId: number): void {
    this.announced.delete(linkId);
  }

  /** Queues a frame; false when the link is down (nothing was queued). */
  send(frame: Uint8Array): boolean {
    if (this.closed) return false;
    const r = native().cn_agent_send(this.ptr, frame, BigInt(frame.length));
    // a malformed frame is this process's bug: it must not vanish silently
    if (r === -22) throw new Error(`a malformed frame (type ${frame[4]}) was queued for the gateway`);
    return r === 0;
  }

  /** Sends a control message to the gateway (src/wire/control.ts; `standby-ready` is the link's own). */
  sendControl(msg: AgentReport | StandbyReport | { type: "standby-ready" }): boolean {
    return this.send(jsonFrame(FrameType.Control, msg));
  }

  /**
   * Ends the connection once what is queued is sent, and connects again at once: the gateway
   * then sees every volume announced anew (a standby's new set of copies starts a new stream).
   */
  async reconnect(): Promise<void> {
    if (this.closed) return;
    await native().cn_agent_reconnect(this.ptr);
  }

  /** Why the last connection attempt failed, what is queued, and how many sealed batches were sent. */
  linkStatus(): {
    up: boolean;
    queuedBytes: number;
    connectedSince: number;
    batches: number;
    lastError: string;
  } {
    if (this.closed) {
      return { up: false, queuedBytes: 0, connectedSince: 0, batches: 0, lastError: "stopped" };
    }
    const out = new BigUint64Array(4);
    const err = new Uint8Array(512);
    native().cn_agent_link_status(this.ptr, new Uint8Array(out.buffer), err, BigInt(err.length));
    return {
      up: out[0] === 1n,
      queuedBytes: Number(out[1]),
      connectedSince: Number(out[2]),
      batches: Number(out[3]),
      lastError: fromCstr(err),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await native().cn_agent_close(this.ptr);
    await this.plane.close();
  }

  private onLink(e: NativeEvent): void {
    this.connected = e.aux === 1;
    if (!this.connected) return;
    for (const v of this.announced.values()) this.send(openFrame(v));
    this.o.onConnected?.();
  }

  private onVolume(e: NativeEvent): void {
    const pv = this.volumes.get(e.source);
    const m = eventJson<{ error?: string }>(e);
    if (e.aux === 1) {
      log.debug("volume accepted by the gateway", { volume: pv?.name, ...m });
      pv?.gatewaySaid("opened");
    } else pv?.gatewaySaid(e.aux === 3 ? "fatal" : "refused", m.error);
  }

  private async onFrame(e: NativeEvent): Promise<void> {
    const body = e.body.slice();
    switch (e.aux) {
      case FrameType.Opened: {
        const m = decodeJson<
          { id: number; lastSeq?: number; known?: boolean; journalId?: number; error?: string }
        >(body);
        const v = this.announced.get(m.id);
        if (!v) return;
        if (m.error) v.onRefused(m.error);
        else {
          v.onOpened({
            lastSeq: Number(m.lastSeq ?? 0),
            known: m.known === true,
            journalId: Number(m.journalId ?? -1),
          });
        }
        return;
      }
      case FrameType.Control: {
        let m: unknown;
        try {
          m = decodeJson(body);
        } catch (e) {
          // refused like a malformed message (src/wire/control.ts): logged, the link stays up
          log.error("control message refused", { from: "gateway", error: (e as Error).message });
          return;
        }
        this.o.onControl?.(m);
        return;
      }
      default:
        if (!this.o.onFrame) {
          log.warn("unexpected frame from the gateway", { type: e.aux });
          return;
        }
        try {
          await this.o.onFrame({ type: e.aux as FrameType, body });
        } catch (err) {
          // a frame that cannot be handled ends the session: the gateway starts the stream over
          log.warn("frame from the gateway refused: reconnecting", { type: e.aux, error: err });
          await this.reconnect();
        }
    }
  }
}

/** CN_DIRTY_STICKY of native/continuum.h. */
const DIRTY_STICKY = 4;

/** Indexes of the set bits among the first `count` (bit c at byte c/8, bit c%8). */
export function setBits(bits: Uint8Array, count: number): number[] {
  const out: number[] = [];
  for (let c = 0; c < count; c++) if ((bits[c >> 3] >> (c & 7)) & 1) out.push(c);
  return out;
}

function openFrame(v: LinkVolume): Uint8Array {
  return jsonFrame(FrameType.Open, { id: v.linkId, name: v.name, size: v.size, ...v.openFields() });
}
