// The connection between a local gateway and a remote site: a sealed link with both ends
// pinned (src/transport/), then SiteHello / SiteWelcome and the record stream.
// The local side reconnects with backoff; the remote side serves one session per
// site at a time (a reconnecting site replaces its stale session, once the records
// the stale one took are journaled).
import { logger } from "../log.ts";
import { ConnReader, ConnWriter } from "../io/conn-reader.ts";
import type { Identity } from "../transport/identity.ts";
import {
  type AuthenticatedConn,
  connectSecure,
  listenSecure,
  type SecureConn,
  type SecureListener,
} from "../transport/secure.ts";
import type { VolumeInfo } from "../journal/journal.ts";
import { ChunkLink, type ChunkReply, type ChunkRequest } from "../recovery/chunk-ops.ts";
import {
  decodeHashes,
  decodeJson,
  decodeMixed,
  decodeSeqFrame,
  decodeTime,
  FrameError,
  FrameType,
  hashesFrame as hashesFrameFor,
  jsonFrame,
  MAX_FRAME,
  mixedFrame,
  readFrame,
  timeFrame,
} from "../wire/frames.ts";
import type { PeerReport, Sender, Session } from "./sender.ts";
import type { AckPoint, Receiver, SiteVolume } from "./receiver.ts";
import { MAX_PAYLOAD, RecordError } from "../record/record.ts";
import { PendingRequests } from "../wire/requests.ts";
import {
  type Answerers,
  answering,
  fieldErrors,
  receiver as controlReceiver,
  type SiteAnswer,
  type SiteAnswerBodies,
  siteAnswers,
  type SiteAnswerTo,
  type SiteRequest,
  siteRequests,
  type Unsent,
} from "../wire/control.ts";
import {
  checkpointSchema,
  hashRequestSchema,
  helloVolumeSchema,
  parseFrame,
  type SiteError,
  siteErrorSchema,
  siteHelloSchema,
  siteWelcomeSchema,
} from "../wire/site-frames.ts";
import { inflateRecord } from "../record/deflate.ts";
import { AppendWindow } from "./append-window.ts";

const log = logger("site-link");

/** Bytes of received records being journaled while a site's stream reads on (src/replication/append-window.ts). */
const APPEND_WINDOW_BYTES = 4 << 20;

export interface SiteClientOptions {
  /** The remote site's name and address. */
  site: string;
  hostname: string;
  port: number;
  fingerprint: string;
  identity: Identity;
  /** This (local) site's name. */
  localSite: string;
  sender: Sender;
  volumes: () => VolumeInfo[];
  /** With no frame from the site for this long (it answers pings every second), the link is dropped and remade. */
  idleTimeoutMs?: number;
  /** A volume's acknowledgement point at the site (its task's), announced in the hello; undefined: the site's --ack-after. */
  ackPoint?: (v: VolumeInfo) => AckPoint | undefined;
  /** A volume's retention at the site (its task's), announced in the hello; undefined: the site's flags. */
  retention?: (v: VolumeInfo) => { windowMs: number; maxBytes?: number } | undefined;
  /** The link came up (after the hello) or went down. */
  onLink?: (up: boolean) => void;
}

/** The local gateway's connection to one remote site. */
export class SiteClient {
  private closed = false;
  private conn: SecureConn | undefined;
  private session: Session | undefined;
  private backoffMs = 200;
  private wake: (() => void) | undefined;
  private reannouncing = false;
  /** A new session must announce a change once the requests in flight are answered. */
  private announce = false;
  private writer: ConnWriter | undefined;
  private requests = new PendingRequests<SiteAnswer>();
  /** The site's answers, by the id of the request they answer; a malformed one fails its request. */
  private readonly answers = (() => {
    const byId = (m: Exclude<SiteAnswer, { type: "refused" }>) => void this.requests.answer(m.id, m);
    return controlReceiver(
      siteAnswers,
      {
        promote: byId,
        demote: byId,
        "drill-up": byId,
        "drill-down": byId,
        "test-start": byId,
        "test-renew": byId,
        "test-stop": byId,
        retention: byId,
        point: byId,
        points: byId,
        copies: byId,
        standbys: byId,
        inventory: byId,
        refused: (m, site) =>
          void this.requests.fail(m.id, new Error(`site ${site} refused the request: ${m.error}`)),
      },
      log,
      (site, id, error) => this.requests.fail(id, new Error(`site ${site}: ${error}`)),
    );
  })();
  /** Chunk operations on the site's copies (recovery). */
  readonly chunks = new ChunkLink((head, payload) => {
    if (!this.writer || !this.connected) return false;
    this.writer.send(head);
    if (payload) this.writer.send(payload);
    return true;
  });
  connected = false;
  lastError = "";

  constructor(private readonly o: SiteClientOptions) {}

  start(): void {
    this.loop();
  }

  /**
   * The set of volumes changed: start a new session announcing it. A request in flight (a
   * promotion, a drill) would fail with the connection, so the restart waits for its answer.
   */
  reannounce(): void {
    if (!this.conn) return;
    this.announce = true;
    this.restartToAnnounce();
  }

  private restartToAnnounce(): void {
    if (!this.announce || !this.conn || this.requests.size > 0) return;
    this.announce = false;
    log.info("new volume: restarting the site session to announce it", { site: this.o.site });
    this.reannouncing = true;
    this.conn.close();
    this.wake?.();
  }

  private async loop(): Promise<void> {
    while (!this.closed) {
      try {
        await this.run();
        this.backoffMs = 200;
      } catch (e) {
        const msg = (e as Error).message;
        if (this.reannouncing) this.backoffMs = 0;
        else {
          if (msg !== this.lastError) log.warn("site link failed", { site: this.o.site, error: msg });
          this.lastError = msg;
        }
        this.reannouncing = false;
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
      this.backoffMs = Math.min(Math.max(this.backoffMs * 2, 200), 5000);
    }
  }

  private async run(): Promise<void> {
    const auth = await connectSecure({
      hostname: this.o.hostname,
      port: this.o.port,
      identity: this.o.identity,
      expectedFingerprint: this.o.fingerprint,
      peerName: this.o.site,
    });
    const conn = auth.conn;
    this.conn = conn;
    this.o.sender.onReset = () => conn.close();
    const reader = new ConnReader(conn, 1 << 20);
    const writer = new ConnWriter(conn, 256 * 1024);
    this.writer = writer;
    let lastFrame = performance.now();
    const idle = setInterval(() => {
      if (performance.now() - lastFrame > (this.o.idleTimeoutMs ?? 10_000)) {
        log.warn("no answer from the remote site: reconnecting", { site: this.o.site });
        conn.close();
      }
    }, 1000);
    try {
      const vols = this.o.volumes();
      this.announce = false; // this hello announces them all
      writer.send(jsonFrame(FrameType.SiteHello, {
        v: 1,
        site: this.o.localSite,
        volumes: vols.map((v) => ({
          id: v.id,
          agent: v.agent,
          name: v.name,
          size: v.size,
          ...(this.o.ackPoint?.(v) ? { ack: this.o.ackPoint(v) } : {}),
          ...(this.o.retention?.(v) ? { retention: this.o.retention(v) } : {}),
        })),
      }));
      const w = await readFrame(reader);
      if (!w || w.type !== FrameType.SiteWelcome) throw new Error("the remote site did not answer the hello");
      const welcome = parseFrame(siteWelcomeSchema, "site welcome", decodeJson(w.body));
      const reports = new Map<number, PeerReport>();
      for (const r of welcome.volumes ?? []) {
        const state = r.state === "consistent" || r.state === "inconsistent" ? r.state : "empty";
        reports.set(r.id, { lastSeq: r.lastSeq, state });
      }
      this.connected = true;
      this.lastError = "";
      log.info("site connected", { site: this.o.site, remote: auth.conn.remoteAddr });
      this.o.onLink?.(true);
      const session = this.o.sender.attach({
        send: (b, body) => {
          writer.send(b);
          if (body) writer.send(body);
        },
        mark: () => writer.mark(),
        get pending() {
          return writer.pending;
        },
        drained: () => writer.drained(),
      }, reports);
      this.session = session;
      while (!this.closed) {
        const f = await readFrame(reader);
        if (!f) throw new Error("the remote site closed the connection");
        if (writer.error) throw writer.error;
        lastFrame = performance.now();
        switch (f.type) {
          case FrameType.Accepted:
            session.onAck(decodeSeqFrame(f.body).seq);
            break;
          case FrameType.Hashes: {
            const h = decodeHashes(f.body);
            session.onHashes(h.volume, h.hashes);
            break;
          }
          case FrameType.Pong:
            session.onPong(decodeTime(f.body));
            break;
          case FrameType.ChunkReply: {
            const m = decodeMixed<ChunkReply>(f.body);
            this.chunks.answer(m.header, m.payload);
            break;
          }
          case FrameType.Control:
            this.answers(this.o.site, decodeJson(f.body));
            break;
          case FrameType.Error:
            // a malformed one ends the link too, as a FrameError naming the field
            throw new Error(
              `remote site reported: ${
                parseFrame(siteErrorSchema, "site error", decodeJson(f.body)).message
              }`,
            );
          default:
            throw new FrameError(`unexpected frame ${f.type} from the remote site`);
        }
      }
    } finally {
      clearInterval(idle);
      this.writer = undefined;
      this.chunks.fail(new Error(`the connection to site ${this.o.site} was lost`));
      this.requests.failAll(new Error(`the connection to site ${this.o.site} was lost`));
      if (this.session) this.o.sender.detach(this.session);
      this.session = undefined;
      if (this.connected && !this.reannouncing) log.warn("site disconnected", { site: this.o.site });
      if (this.connected) this.o.onLink?.(false);
      this.connected = false;
      conn.close();
    }
  }

  /** Sends a control request to the site and waits for its answer; rejects when the site refused it. */
  request<M extends Unsent<SiteRequest>>(msg: M, timeoutMs: number): Promise<SiteAnswerTo<M["type"]>> {
    const w = this.writer;
    if (!w || !this.connected) return Promise.reject(new Error(`site ${this.o.site} is not connected`));
    const answer = this.requests.request(
      (id) => {
        w.send(jsonFrame(FrameType.Control, { ...msg, id } satisfies SiteRequest));
        return true;
      },
      timeoutMs,
      () => new Error(`site ${this.o.site} did not answer within ${timeoutMs} ms`),
    );
    const settled = () => this.restartToAnnounce();
    answer.then(settled, settled);
    // a request is answered by its id with its own type
    return answer.then((a) => {
      if (a.type !== msg.type) {
        throw new Error(`site ${this.o.site} answered a ${msg.type} request with a ${a.type} answer`);
      }
      return a as SiteAnswerTo<M["type"]>;
    });
  }

  close(): void {
    this.closed = true;
    this.conn?.close();
    this.wake?.();
  }
}

export interface SiteServerOptions {
  hostname: string;
  port: number;
  identity: Identity;
  /** Fingerprint → name of the local sites allowed to stream here. */
  trusted: ReadonlyMap<string, string>;
  /** This (remote) site's name. */
  site: string;
  newReceiver: (send: (frame: Uint8Array) => void) => Receiver;
  /** Chunk hashes of a replica (the journal volume), taken once everything received is applied. */
  hashes: (v: VolumeInfo, chunkSize: number) => Promise<Uint8Array>;
  /** The control requests of a local site (promotion, tests, …); each answer goes back by the request's id. */
  requests: Answerers<SiteRequest, SiteAnswerBodies>;
  /** Chunk operations on this site's copies (a recovery at the local site reads them); resolves with the reply frame. */
  onChunkOp?: (req: ChunkRequest, payload: Uint8Array) => Promise<Uint8Array>;
  onRejected?: (remote: string, reason: string) => void;
}

/** The remote gateway's listener for site streams. */
export class SiteServer {
  private listener!: SecureListener;
  private sessions = new Map<string, { conn: SecureConn; receiver: Receiver; ended: Promise<void> }>();
  private closed = false;
  port = 0;

  constructor(private readonly o: SiteServerOptions) {}

  async start(): Promise<void> {
    this.listener = await listenSecure({
      hostname: this.o.hostname,
      port: this.o.port,
      identity: this.o.identity,
      trustedPeers: this.o.trusted,
      onPeerRejected: (r) => this.o.onRejected?.(r.remote, r.reason),
    });
    this.port = this.listener.addr.port;
    (async () => {
      for await (const c of this.listener) this.serve(c);
    })();
  }

  connectedSites(): string[] {
    return [...this.sessions.keys()];
  }

  receiverStatus() {
    return Object.fromEntries([...this.sessions].map(([k, s]) => [k, s.receiver.status()]));
  }

  private async serve(c: AuthenticatedConn): Promise<void> {
    const conn = c.conn;
    const reader = new ConnReader(conn, 1 << 20);
    const writer = new ConnWriter(conn);
    const receiver = this.o.newReceiver((b) => writer.send(b));
    const answer = (m: SiteAnswer) => writer.send(jsonFrame(FrameType.Control, m));
    const requests = controlReceiver(
      siteRequests,
      answering(this.o.requests, (m, a) =>
        answer(
          a instanceof Error
            ? { type: m.type, id: m.id, ok: false, error: a.message }
            : { ...a, type: m.type, id: m.id } as SiteAnswer,
        )),
      log,
      (_, id, error) => answer({ type: "refused", id, error }),
    );
    // a failed append (the journal failed) ends the stream: it stops reading, and the site resends
    const appends = new AppendWindow(APPEND_WINDOW_BYTES, (e) => {
      log.warn("journaling a site's record failed", { site: c.peer, error: e.message });
      conn.close();
    });
    // every record is read into one buffer: the receiver copies what it keeps before the next is read
    let records = new Uint8Array(0);
    const recordBody = (n: number) => {
      if (records.length < n) records = new Uint8Array(n);
      return records.subarray(0, n);
    };
    let ended!: () => void;
    const session = { conn, receiver, ended: new Promise<void>((r) => ended = r) };
    const old = this.sessions.get(c.peer);
    this.sessions.set(c.peer, session);
    try {
      if (old) {
        // a stale session's records reach the journal before this one tells the site where the copy is
        old.conn.close();
        await old.ended;
      }
      const hello = await readFrame(reader);
      if (!hello || hello.type !== FrameType.SiteHello) throw new FrameError("expected a site hello");
      const vols = helloVolumes(c.peer, decodeJson(hello.body));
      const welcome = await receiver.hello(vols);
      writer.send(jsonFrame(FrameType.SiteWelcome, { site: this.o.site, volumes: welcome }));
      log.info("site stream started", { site: c.peer, volumes: vols.length });
      while (!this.closed) {
        const f = await readFrame(reader, MAX_FRAME, recordBody);
        if (!f) break;
        // what follows records (a checkpoint naming one, a hash of the copy, a chunk operation, a
        // request) sees them journaled, as when each record was awaited
        if (f.type !== FrameType.Record && f.type !== FrameType.RecordDeflated && f.type !== FrameType.Ping) {
          await appends.drain();
        }
        switch (f.type) {
          case FrameType.Record:
            await appends.add(receiver.record(f.body), f.body.length);
            break;
          case FrameType.RecordDeflated: {
            const body = inflateRecord(f.body, MAX_PAYLOAD);
            await appends.add(receiver.record(body), body.length);
            break;
          }
          case FrameType.Checkpoint:
            await receiver.checkpoint(parseFrame(checkpointSchema, "checkpoint frame", decodeJson(f.body)));
            break;
          case FrameType.HashRequest: {
            const q = parseFrame(hashRequestSchema, "hash request", decodeJson(f.body));
            const v = receiver.volume(q.volume);
            if (!v) {
              throw new FrameError(`hash request for volume ${q.volume}, which the site did not announce`);
            }
            if (q.chunkSize < 4096 || q.chunkSize > 64 << 20) {
              throw new FrameError(`hash request: chunkSize ${q.chunkSize} is not 4 KiB to 64 MiB`);
            }
            const hashes = await this.o.hashes(v, q.chunkSize);
            writer.send(hashesFrameFor(q.volume, q.chunkSize, v.lastSeq, hashes));
            break;
          }
          case FrameType.Ping:
            writer.send(timeFrame(FrameType.Pong, decodeTime(f.body)));
            break;
          case FrameType.ChunkOp: {
            const m = decodeMixed<ChunkRequest>(f.body);
            const reply = this.o.onChunkOp ? this.o.onChunkOp(m.header, m.payload) : Promise.resolve(
              mixedFrame(FrameType.ChunkReply, { id: m.header.id, ok: false, error: "unsupported" }),
            );
            reply.then(
              (b) => writer.send(b),
              (e) =>
                writer.send(
                  mixedFrame(FrameType.ChunkReply, {
                    id: m.header.id,
                    ok: false,
                    error: (e as Error).message,
                  }),
                ),
            );
            break;
          }
          case FrameType.Control:
            // answered when ready: the record stream goes on meanwhile
            requests(c.peer, decodeJson(f.body));
            break;
          default:
            throw new FrameError(`unexpected frame ${f.type} from site ${c.peer}`);
        }
      }
      await appends.drain();
    } catch (e) {
      if (!this.closed) {
        const msg = (e as Error).message;
        log.warn("site stream dropped", { site: c.peer, error: msg });
        if (e instanceof FrameError || e instanceof RecordError) {
          writer.send(jsonFrame(FrameType.Error, { message: msg } satisfies SiteError));
        }
      }
    } finally {
      await appends.settle();
      await writer.drained();
      receiver.close();
      if (this.sessions.get(c.peer) === session) this.sessions.delete(c.peer);
      conn.close();
      ended();
    }
  }

  close(): void {
    this.closed = true;
    this.listener?.close();
    for (const s of this.sessions.values()) s.conn.close();
  }
}

/**
 * The volumes a hello announces. One that is malformed is left out, with the reason logged: the
 * others stream (its records are then refused as the site did not announce it).
 */
function helloVolumes(site: string, raw: unknown): SiteVolume[] {
  const hello = parseFrame(siteHelloSchema, "site hello", raw);
  const out: SiteVolume[] = [];
  for (const [i, x] of (hello.volumes ?? []).entries()) {
    const r = helloVolumeSchema.safeParse(x);
    if (!r.success) {
      log.warn("a volume of the hello left out", { site, volume: i, error: fieldErrors(r.error) });
      continue;
    }
    const v = r.data;
    out.push({
      id: v.id,
      agent: v.agent,
      name: v.name,
      size: v.size,
      ack: v.ack === "rgp" || v.ack === "rsp" ? v.ack : undefined,
      retention: retentionOf(v.retention),
    });
  }
  return out;
}

/** A volume's retention as a hello announces it; anything malformed is ignored (the site's flags hold). */
export function retentionOf(r: unknown): { windowMs: number; maxBytes?: number } | undefined {
  const x = r as { windowMs?: unknown; maxBytes?: unknown } | undefined;
  if (!x || !Number.isSafeInteger(x.windowMs) || (x.windowMs as number) <= 0) return undefined;
  const maxBytes = Number.isSafeInteger(x.maxBytes) && (x.maxBytes as number) > 0
    ? x.maxBytes as number
    : undefined;
  return { windowMs: x.windowMs as number, ...(maxBytes ? { maxBytes } : {}) };
}
