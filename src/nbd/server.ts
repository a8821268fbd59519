// NBD server: accepts connections on Unix sockets and/or TCP, negotiates with the
// pure Negotiation state machine, then serves requests with many in flight per
// connection. Replies may complete out of order; they are matched by handle.
import { logger } from "../log.ts";
import { Latch } from "../latch.ts";
import { ConnReader, ConnWriter } from "../io/conn-reader.ts";
import { listenOn } from "../link/address.ts";
import {
  CMD_DISC,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  commandName,
  decodeRequest,
  EIO,
  ENOSPC,
  ESHUTDOWN,
  type ExportInfo,
  IHAVEOPT,
  MAX_OPTION_LENGTH,
  Negotiation,
  optionReply,
  REP_ERR_SHUTDOWN,
  REQUEST_SIZE,
  serverGreeting,
  SIMPLE_REPLY_SIZE,
  validateRequest,
  writeSimpleReply,
} from "./protocol.ts";

const log = logger("nbd");

/** How long a client of a withdrawn export gets ESHUTDOWN answers before its connection closes. */
const WITHDRAW_GRACE_MS = 2000;

/** Free bytes before every WRITE payload buffer (8-aligned payload). */
export const WRITE_HEADROOM = 80;

/** An error with the NBD error code to reply with. */
export class NbdError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
    this.name = "NbdError";
  }
}

/** What an export must do; the agent implements it with write interception. */
export interface NbdExport extends ExportInfo {
  read(offset: number, into: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array, fua: boolean): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, fua: boolean, mayTrim: boolean): Promise<void>;
  flush(): Promise<void>;
}

export interface NbdListen {
  unixPath?: string;
  tcp?: { hostname: string; port: number };
}

export interface NbdServerOptions extends NbdListen {
  exports: () => NbdExport[];
  /** Most requests in flight per connection before reading pauses. */
  maxInFlight?: number;
  /** Most payload bytes in flight per connection before reading pauses. */
  maxInFlightBytes?: number;
  handshakeTimeoutMs?: number;
}

export class NbdServer {
  private listeners: Deno.Listener[] = [];
  private conns = new Set<Deno.Conn>();
  private sessions = new Set<Promise<void>>();
  /** Sessions in transmission by export name: how to stop each reading, and its end. */
  private attached = new Map<string, Set<{ stop: () => void; done: Promise<void> }>>();
  private closing = false;
  /** Fires when the server closes: sessions stop reading new requests. */
  private readonly stopped = new Latch<false>();
  readonly tcpPort: number | undefined;

  private constructor(private readonly opts: NbdServerOptions, listeners: Deno.Listener[]) {
    this.listeners = listeners;
    const tcp = listeners.find((l) => l.addr.transport === "tcp");
    this.tcpPort = tcp ? (tcp.addr as Deno.NetAddr).port : undefined;
    for (const l of listeners) this.acceptLoop(l);
  }

  static async listen(opts: NbdServerOptions): Promise<NbdServer> {
    const listeners: Deno.Listener[] = [];
    try {
      if (opts.unixPath) listeners.push(await listenOn({ transport: "unix", path: opts.unixPath }));
      if (opts.tcp) listeners.push(await listenOn({ transport: "tcp", ...opts.tcp }));
    } catch (e) {
      for (const l of listeners) l.close();
      throw e;
    }
    if (listeners.length === 0) throw new Error("NBD server needs a Unix socket path or a TCP address");
    return new NbdServer(opts, listeners);
  }

  private async acceptLoop(l: Deno.Listener): Promise<void> {
    while (!this.closing) {
      let conn: Deno.Conn;
      try {
        conn = await l.accept();
      } catch (e) {
        if (!this.closing) log.error("accept failed", { error: e });
        return;
      }
      if (conn.remoteAddr.transport === "tcp") (conn as Deno.TcpConn).setNoDelay(true);
      this.conns.add(conn);
      const s = this.session(conn).finally(() => {
        this.conns.delete(conn);
        this.sessions.delete(s);
        try {
          conn.close();
        } catch { /* already closed */ }
      });
      this.sessions.add(s);
    }
  }

  /** Stops accepting, answers requests already in flight, then closes connections. */
  async close(): Promise<void> {
    this.closing = true;
    this.stopped.fire(false);
    for (const l of this.listeners) {
      try {
        l.close();
      } catch { /* closed */ }
    }
    const deadline = new Promise((r) => setTimeout(r, 10_000));
    await Promise.race([Promise.all(this.sessions), deadline]);
    for (const c of this.conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    if (this.opts.unixPath) {
      try {
        Deno.removeSync(this.opts.unixPath);
      } catch { /* gone */ }
    }
  }

  /**
   * An export is withdrawn (no longer in the exports list): on its connections the requests in
   * flight are answered, later ones get ESHUTDOWN (the spec's "server shutting down", so a
   * client disconnects cleanly), and each connection closes once its client disconnects or
   * after a short grace. Resolves once they are closed.
   */
  async detach(name: string): Promise<void> {
    const sessions = [...this.attached.get(name) ?? []];
    for (const s of sessions) s.stop();
    await Promise.all(sessions.map((s) => s.done));
  }

  private peerName(conn: Deno.Conn): string {
    const a = conn.remoteAddr;
    return a.transport === "tcp" ? `${a.hostname}:${a.port}` : "unix";
  }

  private async session(conn: Deno.Conn): Promise<void> {
    const peer = this.peerName(conn);
    const reader = new ConnReader(conn);
    const writer = new ConnWriter(conn);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const selected = await Promise.race([
        this.negotiate(reader, writer, peer),
        new Promise<undefined>((resolve) => {
          timer = setTimeout(() => {
            log.warn("NBD handshake timed out", { peer });
            try {
              conn.close();
            } catch { /* closed */ }
            resolve(undefined);
          }, this.opts.handshakeTimeoutMs ?? 30_000);
        }),
      ]);
      clearTimeout(timer);
      if (!selected) return;
      const exp = this.opts.exports().find((e) => e.name === selected.name);
      if (!exp) return;
      log.debug("NBD client attached", { peer, export: exp.name });
      const detached = new Latch<"withdrawn">();
      const done = this.transmission(exp, reader, writer, peer, detached);
      const entry = { stop: () => detached.fire("withdrawn"), done: done.catch(() => {}) };
      const set = this.attached.get(exp.name) ?? new Set();
      this.attached.set(exp.name, set.add(entry));
      try {
        await done;
      } finally {
        set.delete(entry);
        if (set.size === 0 && this.attached.get(exp.name) === set) this.attached.delete(exp.name);
      }
    } catch (e) {
      if (!this.closing && !(e instanceof Deno.errors.BadResource)) {
        log.warn("NBD connection failed", { peer, error: e });
      }
    } finally {
      clearTimeout(timer);
      await writer.drained();
    }
  }

  private async negotiate(r: ConnReader, w: ConnWriter, peer: string): Promise<ExportInfo | undefined> {
    const exports = () => this.opts.exports();
    const n = new Negotiation((name) => exports().find((e) => e.name === name), exports);
    w.send(serverGreeting());
    if (!await r.fill(4)) return undefined;
    const flagsView = r.take(4);
    const bad = n.clientFlags(new DataView(flagsView.buffer, flagsView.byteOffset, 4).getUint32(0));
    if (bad) {
      log.warn("NBD handshake refused", { peer, reason: bad });
      return undefined;
    }
    while (true) {
      if (!await r.fill(16)) return undefined;
      const h = r.take(16);
      const v = new DataView(h.buffer, h.byteOffset, 16);
      if (v.getBigUint64(0) !== IHAVEOPT) {
        log.warn("NBD handshake refused", { peer, reason: "bad option magic" });
        return undefined;
      }
      const option = v.getUint32(8);
      const length = v.getUint32(12);
      if (length > MAX_OPTION_LENGTH) {
        log.warn("NBD handshake refused", { peer, reason: `option ${option} length ${length} too large` });
        return undefined;
      }
      const data = await r.readExact(length);
      if (!data) return undefined;
      if (this.closing) {
        w.send(optionReply(option, REP_ERR_SHUTDOWN, new TextEncoder().encode("server is shutting down")));
        continue;
      }
      const out = n.option(option, data);
      for (const b of out.replies) w.send(b);
      if (out.close) {
        if (out.reason) log.info("NBD negotiation ended", { peer, reason: out.reason });
        return undefined;
      }
      if (out.selected) return out.selected;
    }
  }

  private async transmission(
    exp: NbdExport,
    r: ConnReader,
    w: ConnWriter,
    peer: string,
    detached: Latch<"withdrawn">,
  ): Promise<void> {
    const maxInFlight = this.opts.maxInFlight ?? 128;
    const maxBytes = this.opts.maxInFlightBytes ?? 128 * 1024 * 1024;
    let inFlight = 0, inFlightBytes = 0;
    let wake: (() => void) | undefined;
    const pending = new Set<Promise<void>>();

    const replyError = (handle: bigint, code: number) => {
      const b = new Uint8Array(SIMPLE_REPLY_SIZE);
      writeSimpleReply(b, 0, code, handle);
      w.send(b);
    };

    const run = (bytes: number, work: () => Promise<Uint8Array>, handle: bigint, what: string) => {
      inFlight++;
      inFlightBytes += bytes;
      const p = work().then(
        (reply) => w.send(reply),
        (e) => {
          const code = e instanceof NbdError ? e.code : EIO;
          if (e instanceof NbdError) log.debug("NBD request refused", { peer, op: what, error: e.message });
          else log.error("NBD request failed", { peer, op: what, error: e });
          replyError(handle, code);
        },
      ).finally(() => {
        inFlight--;
        inFlightBytes -= bytes;
        pending.delete(p);
        wake?.();
      });
      pending.add(p);
    };

    const ok = (handle: bigint) => {
      const b = new Uint8Array(SIMPLE_REPLY_SIZE);
      writeSimpleReply(b, 0, 0, handle);
      return b;
    };

    // a request header being read survives the export's withdrawal: it is answered ESHUTDOWN
    let header: Promise<boolean> | undefined;
    let grace: Promise<false> | undefined;
    let graceTimer: ReturnType<typeof setTimeout> | undefined;
    while (!w.error) {
      while (inFlight >= maxInFlight || inFlightBytes >= maxBytes) {
        await new Promise<void>((res) => wake = res);
        wake = undefined;
      }
      header ??= r.fill(REQUEST_SIZE);
      // latches, not Promise.race with the long-lived promises: that kept a reaction per request (src/latch.ts)
      const got = await this.stopped.race(grace ? Promise.race([header, grace]) : detached.race(header));
      if (got === "withdrawn") {
        grace = new Promise<false>((res) => graceTimer = setTimeout(() => res(false), WITHDRAW_GRACE_MS));
        continue;
      }
      if (!got) break;
      header = undefined;
      const raw = r.take(REQUEST_SIZE);
      const req = decodeRequest(raw);
      if (!req) {
        log.warn("NBD request with bad magic: disconnecting", { peer });
        break;
      }
      if (req.type === CMD_DISC) break;
      if (grace) {
        if (req.type === CMD_WRITE && !await r.discard(req.length)) break;
        replyError(req.handle, ESHUTDOWN);
        continue;
      }
      const err = validateRequest(req, exp.size, exp.readOnly);
      const what = commandName(req.type);
      if (req.type === CMD_WRITE) {
        if (err) {
          if (!await r.discard(req.length)) {
            log.warn("NBD client disconnected mid-payload", { peer });
            break;
          }
          log.debug("NBD request refused", {
            peer,
            op: what,
            offset: req.offset,
            length: req.length,
            code: err,
          });
          replyError(req.handle, err);
          continue;
        }
        // room before the payload lets the agent build its record frame in place
        const data = new Uint8Array(WRITE_HEADROOM + req.length).subarray(WRITE_HEADROOM);
        if (!await r.readInto(data)) {
          // nothing is written for a request whose payload never fully arrived
          log.warn("NBD client disconnected mid-payload", { peer, offset: req.offset, length: req.length });
          break;
        }
        const fua = (req.flags & CMD_FLAG_FUA) !== 0;
        run(req.length, () => exp.write(req.offset, data, fua).then(() => ok(req.handle)), req.handle, what);
        continue;
      }
      if (err) {
        log.debug("NBD request refused", {
          peer,
          op: what,
          offset: req.offset,
          length: req.length,
          code: err,
        });
        replyError(req.handle, err);
        continue;
      }
      const fua = (req.flags & CMD_FLAG_FUA) !== 0;
      switch (req.type) {
        case CMD_READ:
          run(
            req.length,
            async () => {
              const b = new Uint8Array(SIMPLE_REPLY_SIZE + req.length);
              await exp.read(req.offset, b.subarray(SIMPLE_REPLY_SIZE));
              writeSimpleReply(b, 0, 0, req.handle);
              return b;
            },
            req.handle,
            what,
          );
          break;
        case CMD_FLUSH:
          run(0, () => exp.flush().then(() => ok(req.handle)), req.handle, what);
          break;
        case CMD_TRIM:
          run(0, () => exp.trim(req.offset, req.length, fua).then(() => ok(req.handle)), req.handle, what);
          break;
        case CMD_WRITE_ZEROES: {
          const mayTrim = (req.flags & CMD_FLAG_NO_HOLE) === 0;
          run(
            0,
            () => exp.writeZeroes(req.offset, req.length, fua, mayTrim).then(() => ok(req.handle)),
            req.handle,
            what,
          );
          break;
        }
      }
    }
    clearTimeout(graceTimer);
    // NBD_CMD_DISC or end of stream: finish what is in flight before closing
    await Promise.all(pending);
    await w.drained();
  }
}

/** Maps a disk error to the NBD error a client should see. */
export function nbdCodeForErrno(code: string): number {
  return code === "ENOSPC" || code === "EDQUOT" || code === "EFBIG" ? ENOSPC : EIO;
}
