// The agent's persistent, authenticated connection to its local gateway. It
// carries records out and acknowledgements back, and reconnects with backoff;
// what to resend after a reconnect is each volume's decision (onOpened).
import { logger } from "../log.ts";
import { ConnReader, ConnWriter } from "../io/conn-reader.ts";
import { type Address, connectTo, formatAddress } from "./address.ts";
import { agentProof, b64, gatewayProof, nonce, sameBytes } from "../wire/auth.ts";
import { decodeJson, decodeSeqFrame, type Frame, FrameType, jsonFrame, readFrame } from "../wire/frames.ts";

const log = logger("link");

export interface OpenedInfo {
  /** Highest sequence number the gateway's journal holds for the volume. */
  lastSeq: number;
  /** False when the gateway had never seen the volume: it needs a full copy. */
  known: boolean;
  /** The gateway's id of the volume (records streamed to a standby name it). */
  journalId: number;
}

/** A volume carried by the link. */
export interface LinkVolume {
  readonly linkId: number;
  readonly name: string;
  readonly size: number;
  /** Extra fields of the Open message (a standby copy reports its position and state). */
  openFields?(): Record<string, unknown>;
  onOpened(info: OpenedInfo): void;
  onRefused(message: string): void;
  onLinkDown(): void;
  onAccepted(seq: number): void;
  onDurable(seq: number): void;
}

export interface AgentLinkOptions {
  gateway: Address;
  agent: string;
  secret: Uint8Array;
  /** Extra control messages from the gateway (the control plane). */
  onControl?: (msg: unknown) => void;
  /** Frames the link does not handle itself (the replication stream to a standby), in order. */
  onFrame?: (f: Frame) => Promise<void> | void;
  /** Called after every (re)connection, once the volumes' Open messages are sent. */
  onConnected?: () => void;
  handshakeTimeoutMs?: number;
}

export class AgentLink {
  private volumes = new Map<number, LinkVolume>();
  private conn: Deno.Conn | undefined;
  private writer: ConnWriter | undefined;
  private closed = false;
  private connected = false;
  private backoffMs = 100;
  /** Set by reconnect(): the connection is ended on purpose and made again at once. */
  private restarting = false;
  private wake: (() => void) | undefined;
  /** Why the last attempt failed, for status. */
  lastError = "";
  connectedSince = 0;

  constructor(private readonly opts: AgentLinkOptions) {}

  get up(): boolean {
    return this.connected;
  }

  get queuedBytes(): number {
    return this.writer?.pending ?? 0;
  }

  register(v: LinkVolume): void {
    this.volumes.set(v.linkId, v);
    if (this.connected) this.writer!.send(openFrame(v));
  }

  unregister(linkId: number): void {
    this.volumes.delete(linkId);
  }

  /** Queues a frame; false when the link is down (nothing was queued). */
  send(frame: Uint8Array): boolean {
    if (!this.connected || !this.writer || this.writer.error) return false;
    this.writer.send(frame);
    return true;
  }

  sendControl(msg: unknown): boolean {
    return this.send(jsonFrame(FrameType.Control, msg));
  }

  start(): void {
    this.loop();
  }

  /** Reconnect now instead of waiting out the backoff. */
  poke(): void {
    this.backoffMs = 100;
    this.wake?.();
  }

  private async loop(): Promise<void> {
    while (!this.closed) {
      try {
        await this.session();
        this.backoffMs = 100;
      } catch (e) {
        if (this.restarting && !this.closed) {
          this.restarting = false;
          log.info("reconnecting to the gateway", { gateway: formatAddress(this.opts.gateway) });
          continue;
        }
        const msg = (e as Error).message;
        if (msg !== this.lastError) {
          log.warn("gateway link failed", { gateway: formatAddress(this.opts.gateway), error: msg });
        }
        this.lastError = msg;
      }
      if (this.closed) break;
      await new Promise<void>((r) => {
        const t = setTimeout(r, this.backoffMs);
        this.wake = () => {
          clearTimeout(t);
          r();
        };
      });
      this.wake = undefined;
      this.backoffMs = Math.min(this.backoffMs * 2, 5000);
    }
  }

  private async session(): Promise<void> {
    const conn = await connectTo(this.opts.gateway);
    this.conn = conn;
    const reader = new ConnReader(conn);
    const writer = new ConnWriter(conn);
    try {
      await this.authenticate(reader, writer);
      this.writer = writer;
      this.connected = true;
      this.connectedSince = Date.now();
      this.lastError = "";
      log.info("connected to gateway", { gateway: formatAddress(this.opts.gateway), agent: this.opts.agent });
      for (const v of this.volumes.values()) writer.send(openFrame(v));
      this.opts.onConnected?.();
      while (!this.closed) {
        const f = await readFrame(reader);
        if (!f) throw new Error("gateway closed the connection");
        switch (f.type) {
          case FrameType.Accepted: {
            const { volume, seq } = decodeSeqFrame(f.body);
            this.volumes.get(volume)?.onAccepted(seq);
            break;
          }
          case FrameType.Durable: {
            const { volume, seq } = decodeSeqFrame(f.body);
            this.volumes.get(volume)?.onDurable(seq);
            break;
          }
          case FrameType.Opened: {
            const m = decodeJson<
              { id: number; lastSeq?: number; known?: boolean; journalId?: number; error?: string }
            >(
              f.body,
            );
            const v = this.volumes.get(m.id);
            if (!v) break;
            if (m.error) v.onRefused(m.error);
            else {v.onOpened({
                lastSeq: Number(m.lastSeq ?? 0),
                known: m.known === true,
                journalId: Number(m.journalId ?? -1),
              });}
            break;
          }
          case FrameType.Control:
            this.opts.onControl?.(decodeJson<unknown>(f.body));
            break;
          case FrameType.Error:
            throw new Error(
              `gateway reported: ${decodeJson<{ message?: string }>(f.body).message ?? "error"}`,
            );
          default:
            if (!this.opts.onFrame) throw new Error(`unexpected frame type ${f.type} from gateway`);
            await this.opts.onFrame(f);
        }
      }
    } finally {
      const wasUp = this.connected;
      this.connected = false;
      this.writer = undefined;
      try {
        conn.close();
      } catch { /* closed */ }
      if (wasUp) {
        log.warn("gateway link down", { gateway: formatAddress(this.opts.gateway) });
        for (const v of this.volumes.values()) v.onLinkDown();
      }
    }
  }

  private async authenticate(reader: ConnReader, writer: ConnWriter): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        try {
          this.conn?.close();
        } catch { /* closed */ }
        reject(new Error("gateway handshake timed out"));
      }, this.opts.handshakeTimeoutMs ?? 10_000);
    });
    try {
      await Promise.race([this.handshake(reader, writer), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async handshake(reader: ConnReader, writer: ConnWriter): Promise<void> {
    const challenge = await readFrame(reader);
    if (!challenge || challenge.type !== FrameType.Challenge) {
      throw new Error("gateway did not send a challenge");
    }
    const gwNonce = b64.decode(decodeJson<{ nonce?: string }>(challenge.body).nonce);
    if (gwNonce.length !== 32) throw new Error("gateway challenge malformed");
    const mine = nonce();
    const proof = agentProof(this.opts.secret, this.opts.agent, gwNonce, mine);
    writer.send(jsonFrame(FrameType.Hello, {
      v: 1,
      agent: this.opts.agent,
      nonce: b64.encode(mine),
      proof: b64.encode(proof),
    }));
    const answer = await readFrame(reader);
    if (!answer) throw new Error("gateway closed the connection during authentication");
    if (answer.type === FrameType.Denied) {
      throw new Error(
        `gateway refused authentication: ${decodeJson<{ reason?: string }>(answer.body).reason ?? ""}`,
      );
    }
    if (answer.type !== FrameType.Welcome) throw new Error("unexpected answer to authentication");
    const theirs = b64.decode(decodeJson<{ proof?: string }>(answer.body).proof);
    if (!sameBytes(theirs, gatewayProof(this.opts.secret, this.opts.agent, gwNonce, mine))) {
      throw new Error("gateway failed to prove it holds this agent's secret: not sending it any data");
    }
  }

  /**
   * Ends the connection once what is queued is sent, and connects again at once: the gateway
   * then sees every volume announced anew (a standby's new set of copies starts a new stream).
   */
  async reconnect(): Promise<void> {
    if (!this.conn || !this.connected) return;
    await this.writer?.drained();
    this.restarting = true;
    try {
      this.conn.close();
    } catch { /* closed */ }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
    if (this.writer) await this.writer.drained();
    try {
      this.conn?.close();
    } catch { /* closed */ }
  }
}

function openFrame(v: LinkVolume): Uint8Array {
  return jsonFrame(FrameType.Open, { id: v.linkId, name: v.name, size: v.size, ...v.openFields?.() });
}
