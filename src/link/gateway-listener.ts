// The local gateway's side of the agent link: authenticates each agent by its
// secret before reading anything else, opens its volumes in the journal, verifies
// every record (checksums, sequence, bounds) and appends it, then acknowledges:
// Accepted once appended, Durable once the group commit covering it is done.
import { logger } from "../log.ts";
import { ConnReader, ConnWriter } from "../io/conn-reader.ts";
import { type Address, formatAddress, listenOn } from "./address.ts";
import { agentProof, b64, gatewayProof, nonce, sameBytes } from "../wire/auth.ts";
import { ChunkLink, type ChunkReply } from "../recovery/chunk-ops.ts";
import {
  decodeJson,
  decodeMixed,
  type Frame,
  FRAME_HEADER,
  FrameError,
  FrameType,
  jsonFrame,
  readFrame,
  seqFrame,
} from "../wire/frames.ts";
import { decodeHeader, Kind, payloadIntact, RecordError } from "../record/record.ts";
import { MAX_PAYLOAD } from "../nbd/protocol.ts";
import type { Journal, VolumeInfo } from "../journal/journal.ts";

const log = logger("ingest");

export interface GatewayListenerOptions {
  listen: Address[];
  journal: Journal;
  /** The secret of each agent allowed to connect. */
  secrets: () => Map<string, Uint8Array>;
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

/** What a remote gateway does with standby agents. */
export interface StandbyHandler {
  /** A standby volume was announced; resolves with the journal's id for it. */
  open(agent: string, m: { name: string; size: number; lastSeq: number; state: string }): Promise<number>;
  /** Every volume is announced: start streaming to the agent. */
  ready(agent: string, channel: { send(b: Uint8Array): void; readonly pending: number }): void;
  /** Acknowledgements, hashes and pongs from the agent. */
  frame(agent: string, f: Frame): void;
  closed(agent: string): void;
}

interface Session {
  chunks: ChunkLink;
  agent: string;
  peer: string;
  conn: Deno.Conn;
  writer: ConnWriter;
  /** agent's link id → journal volume */
  volumes: Map<number, VolumeInfo>;
  byJournalId: Map<number, number>;
}

export class GatewayListener {
  private listeners: Deno.Listener[] = [];
  private sessions = new Map<string, Session>();
  private closed = false;
  readonly addresses: Address[] = [];
  /** Refused connections, by reason (for status and tests). */
  readonly refused = new Map<string, number>();

  private constructor(private readonly o: GatewayListenerOptions) {
    o.journal.onDurable((id, seq) => {
      for (const s of this.sessions.values()) {
        const linkId = s.byJournalId.get(id);
        if (linkId !== undefined) s.writer.send(seqFrame(FrameType.Durable, linkId, seq));
      }
    });
  }

  static async listen(o: GatewayListenerOptions): Promise<GatewayListener> {
    const g = new GatewayListener(o);
    try {
      for (const a of o.listen) {
        const l = await listenOn(a);
        g.listeners.push(l);
        g.addresses.push(
          l.addr.transport === "tcp" ? { transport: "tcp", hostname: l.addr.hostname, port: l.addr.port } : a,
        );
      }
    } catch (e) {
      await g.close();
      throw e;
    }
    for (const l of g.listeners) g.accept(l);
    return g;
  }

  /** Chunk operations on an agent's volumes (recovery), if it is connected. */
  chunks(agent: string): ChunkLink | undefined {
    return this.sessions.get(agent)?.chunks;
  }

  connectedAgents(): string[] {
    return [...this.sessions.keys()];
  }

  /** Sends a control message to a connected agent; false if it is not connected. */
  sendControl(agent: string, msg: unknown): boolean {
    const s = this.sessions.get(agent);
    if (!s) return false;
    s.writer.send(jsonFrame(FrameType.Control, msg));
    return true;
  }

  private async accept(l: Deno.Listener): Promise<void> {
    while (!this.closed) {
      let conn: Deno.Conn;
      try {
        conn = await l.accept();
      } catch (e) {
        if (!this.closed) log.error("accept failed", { error: e });
        return;
      }
      if (conn.remoteAddr.transport === "tcp") (conn as Deno.TcpConn).setNoDelay(true);
      this.serve(conn).catch((e) => log.error("agent session failed", { error: e }));
    }
  }

  private refuse(reason: string): void {
    this.refused.set(reason, (this.refused.get(reason) ?? 0) + 1);
  }

  private async serve(conn: Deno.Conn): Promise<void> {
    const a = conn.remoteAddr;
    const peer = a.transport === "tcp" ? `${a.hostname}:${a.port}` : "unix";
    const reader = new ConnReader(conn);
    const writer = new ConnWriter(conn);
    let session: Session | undefined;
    try {
      const agent = await this.authenticate(conn, reader, writer, peer);
      if (!agent) return;
      const old = this.sessions.get(agent);
      if (old) {
        log.info("agent reconnected; closing its previous connection", { agent });
        try {
          old.conn.close();
        } catch { /* closed */ }
      }
      const w = writer;
      session = {
        agent,
        peer,
        conn,
        writer,
        volumes: new Map(),
        byJournalId: new Map(),
        chunks: new ChunkLink((b) => (w.send(b), !w.error)),
      };
      this.sessions.set(agent, session);
      log.info("agent connected", { agent, peer });
      this.o.onAgent?.(agent);
      await this.frames(session, reader);
    } catch (e) {
      if (
        !this.closed && !(e instanceof Deno.errors.BadResource) && !(e instanceof Deno.errors.Interrupted)
      ) {
        const msg = (e as Error).message;
        log.warn("agent connection dropped", { agent: session?.agent, peer, error: msg });
        if (e instanceof FrameError || e instanceof RecordError) {
          writer.send(jsonFrame(FrameType.Error, { message: msg }));
        }
      }
    } finally {
      await writer.drained();
      session?.chunks.fail(new Error(`agent ${session.agent} disconnected`));
      if (session && this.sessions.get(session.agent) === session) {
        this.sessions.delete(session.agent);
        this.o.standby?.closed(session.agent);
      }
      try {
        conn.close();
      } catch { /* closed */ }
    }
  }

  private async authenticate(
    conn: Deno.Conn,
    reader: ConnReader,
    writer: ConnWriter,
    peer: string,
  ): Promise<string | undefined> {
    const gwNonce = nonce();
    writer.send(jsonFrame(FrameType.Challenge, { v: 1, nonce: b64.encode(gwNonce) }));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => {
        this.refuse("handshake timeout");
        log.warn("agent handshake timed out", { peer });
        try {
          conn.close();
        } catch { /* closed */ }
        resolve(undefined);
      }, this.o.handshakeTimeoutMs ?? 10_000);
    });
    try {
      const hello = await Promise.race([readFrame(reader), timeout]);
      if (!hello) return undefined;
      if (hello.type !== FrameType.Hello) {
        this.refuse("no hello");
        log.warn("agent refused: expected a hello frame", { peer, frame: hello.type });
        return undefined;
      }
      const m = decodeJson<{ agent?: unknown; nonce?: string; proof?: string }>(hello.body);
      const agent = typeof m.agent === "string" && m.agent.length <= 128 ? m.agent : "";
      const secret = agent ? this.o.secrets().get(agent) : undefined;
      const agentNonce = b64.decode(m.nonce);
      const proof = b64.decode(m.proof);
      if (
        !secret || agentNonce.length !== 32 ||
        !sameBytes(proof, agentProof(secret, agent, gwNonce, agentNonce))
      ) {
        this.refuse("authentication failed");
        // the peer and the claimed name are logged; never a secret or a proof
        log.warn("agent refused: authentication failed", {
          peer,
          claimedAgent: agent || "(invalid)",
          knownAgent: !!secret,
        });
        writer.send(jsonFrame(FrameType.Denied, { reason: "authentication failed" }));
        return undefined;
      }
      writer.send(
        jsonFrame(FrameType.Welcome, { proof: b64.encode(gatewayProof(secret, agent, gwNonce, agentNonce)) }),
      );
      return agent;
    } finally {
      clearTimeout(timer);
    }
  }

  private async frames(s: Session, reader: ConnReader): Promise<void> {
    const touched = new Map<number, number>();
    const flushAcks = () => {
      for (const [linkId, seq] of touched) s.writer.send(seqFrame(FrameType.Accepted, linkId, seq));
      touched.clear();
    };
    while (!this.closed) {
      if (touched.size > 0 && reader.buffered < FRAME_HEADER) flushAcks();
      const f = await readFrame(reader);
      if (!f) return;
      switch (f.type) {
        case FrameType.Record: {
          const fence = this.o.fenced?.(s.agent);
          if (fence) throw new RecordError(`agent ${s.agent} is fenced (${fence}): its writes are refused`);
          const h = decodeHeader(f.body, MAX_PAYLOAD);
          const v = s.volumes.get(h.volume);
          if (!v) throw new RecordError(`record for volume ${h.volume}, which this connection did not open`);
          if (!payloadIntact(f.body, h)) {
            throw new RecordError(`record ${h.seq} of ${v.name}: payload checksum mismatch`);
          }
          if (h.kind === Kind.Wrap) throw new RecordError("wrap records do not travel");
          if (h.seq !== v.lastSeq + 1) {
            throw new RecordError(`record ${h.seq} of ${v.name} out of sequence (expected ${v.lastSeq + 1})`);
          }
          if (h.kind !== Kind.Flush && h.offset + h.length > v.size) {
            throw new RecordError(`record ${h.seq} of ${v.name} reaches past the end of the volume`);
          }
          const linkId = h.volume;
          await this.o.journal.append(v.id, f.body, h);
          touched.set(linkId, h.seq);
          break;
        }
        case FrameType.Open:
          await this.open(s, decodeJson<OpenMessage>(f.body));
          break;
        case FrameType.ChunkReply: {
          const m = decodeMixed<ChunkReply>(f.body);
          s.chunks.answer(m.header, m.payload);
          break;
        }
        case FrameType.Accepted:
        case FrameType.Hashes:
        case FrameType.Pong:
          if (!this.o.standby) throw new FrameError(`unexpected frame type ${f.type} from agent`);
          this.o.standby.frame(s.agent, f);
          break;
        case FrameType.Control: {
          const m = decodeJson<{ type?: string }>(f.body);
          if (m?.type === "standby-ready" && this.o.standby) {
            this.o.standby.ready(s.agent, {
              send: (b) => s.writer.send(b),
              get pending() {
                return s.writer.pending;
              },
            });
          } else {
            this.o.onControl?.(s.agent, m, (r) => s.writer.send(jsonFrame(FrameType.Control, r)));
          }
          break;
        }
        default:
          throw new FrameError(`unexpected frame type ${f.type} from agent`);
      }
    }
  }

  private async open(s: Session, m: OpenMessage): Promise<void> {
    const id = Number(m.id);
    const name = typeof m.name === "string" ? m.name : "";
    const size = Number(m.size);
    const bad = !Number.isInteger(id) || id < 0 || id > 0xffffffff || !/^[A-Za-z0-9._-]{1,64}$/.test(name) ||
      !Number.isSafeInteger(size) || size <= 0;
    if (bad) {
      s.writer.send(jsonFrame(FrameType.Opened, { id, error: "malformed volume description" }));
      return;
    }
    if (m.standby === true) {
      await this.openStandby(s, id, name, size, m);
      return;
    }
    try {
      const v = await this.o.journal.registerVolume(s.agent, name, size, this.o.mirrorPath(s.agent, name));
      await this.o.onVolume?.(v);
      s.volumes.set(id, v);
      s.byJournalId.set(v.id, id);
      const known = v.known;
      v.known = true;
      s.writer.send(jsonFrame(FrameType.Opened, { id, lastSeq: v.lastSeq, known, journalId: v.id }));
      // Acknowledge again what the journal already holds: the Accepted / Durable frames
      // of records that arrived just before a previous connection dropped went nowhere,
      // and a reconnecting agent that has nothing to resend would otherwise wait for
      // them until its next write (a FLUSH in flight hung forever; found by
      // tests/security-replay.test.ts, "regression: a FLUSH in flight when the link drops").
      if (known && v.lastSeq > 0) s.writer.send(seqFrame(FrameType.Accepted, id, v.lastSeq));
      if (known && v.durableSeq > 0) s.writer.send(seqFrame(FrameType.Durable, id, v.durableSeq));
      log.info("volume opened", { agent: s.agent, volume: name, lastSeq: v.lastSeq, known });
    } catch (e) {
      log.error("volume refused", { agent: s.agent, volume: name, error: e });
      s.writer.send(jsonFrame(FrameType.Opened, { id, error: (e as Error).message }));
    }
  }

  private async openStandby(
    s: Session,
    id: number,
    name: string,
    size: number,
    m: OpenMessage,
  ): Promise<void> {
    if (!this.o.standby) {
      s.writer.send(jsonFrame(FrameType.Opened, { id, error: "this gateway does not feed standby servers" }));
      return;
    }
    try {
      const journalId = await this.o.standby.open(s.agent, {
        name,
        size,
        lastSeq: Number(m.lastSeq) || 0,
        state: String(m.state ?? "empty"),
      });
      s.writer.send(jsonFrame(FrameType.Opened, { id, journalId }));
    } catch (e) {
      log.error("standby volume refused", { agent: s.agent, volume: name, error: e });
      s.writer.send(jsonFrame(FrameType.Opened, { id, error: (e as Error).message }));
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const l of this.listeners) {
      try {
        l.close();
      } catch { /* closed */ }
    }
    for (const s of this.sessions.values()) {
      await s.writer.drained();
      try {
        s.conn.close();
      } catch { /* closed */ }
    }
    for (const a of this.addresses) {
      if (a.transport === "unix") {
        try {
          Deno.removeSync(a.path);
        } catch { /* gone */ }
      }
    }
  }

  describe(): string[] {
    return this.addresses.map(formatAddress);
  }
}

interface OpenMessage {
  id?: unknown;
  name?: unknown;
  size?: unknown;
  standby?: unknown;
  lastSeq?: unknown;
  state?: unknown;
}
