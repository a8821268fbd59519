// Mutually authenticated, encrypted connections between sites (design and threat model:
// docs/transport-security.md).
//
// Over TCP, each side sends a hello with a fresh X25519 key; both derive the session's
// keys, one per direction, from the exchange and the two hellos. Everything after the
// hellos travels in sealed batches (AES-256-GCM through native/seal.c, as on the agent
// link): confidentiality, integrity, no replay or reordering. The server shows its
// certificate; a client whose pin it does not match goes no further. The client then
// proves it holds its site's key: its certificate and an Ed25519 signature over the
// session's transcript and both fingerprints. The server reads nothing else from a client
// before it has checked that the certificate's fingerprint is a trusted peer and that the
// signature holds; only then does it send its own signature, which the client checks with
// the key it pinned. A proof is useless in any other session, so a relay in the middle
// cannot pass one off.
//
// Not node:tls: Deno's node:tls accepted a certificate without checking the handshake's
// signature (hence the proofs, kept), and reading it cost a site's remote gateway more CPU
// per write than anything else it did (docs/decisions.md).
import { logger } from "../log.ts";
import type { Readable, Writable } from "../io/conn-reader.ts";
import type { Bytes } from "./der.ts";
import {
  BatchReader,
  decodeProof,
  encodeProof,
  ephemeral,
  HandshakeError,
  HELLO_BYTES,
  PROOF_MAX,
  proofMessage,
  proofValid,
  Sealer,
  type Session,
  session,
  sign,
} from "./handshake.ts";
import {
  certificateCommonName,
  certificateFingerprint,
  type Identity,
  importSigningKey,
  parseFingerprint,
  pemDecode,
  subjectPublicKeyInfo,
} from "./identity.ts";

const log = logger("transport");

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

/** A byte stream to an authenticated peer, read and written as ConnReader and ConnWriter do. */
export interface SecureConn extends Readable, Writable {
  /**
   * Bytes of the peer's stream; null once the peer has ended it cleanly. Throws when the
   * connection was cut, or a batch failed its check (altered, replayed, reordered).
   */
  read(p: Uint8Array): Promise<number | null>;
  /** Sealed at once, in call order: the buffer may be reused as soon as this returns. */
  write(p: Uint8Array): Promise<number>;
  /** Ends this direction cleanly (a sealed end of stream, then FIN); the peer's stays open. */
  closeWrite(): Promise<void>;
  /** "address:port" of the peer. */
  readonly remoteAddr: string;
  /** Tears the connection down at once. */
  close(): void;
}

export interface AuthenticatedConn {
  conn: SecureConn;
  /** Site name: trustedPeers' name on the server; on the client, peerName or the certificate's name. */
  peer: string;
  fingerprint: string;
}

export interface PeerRejection {
  remote: string;
  /** What the peer presented, when it got that far. */
  fingerprint?: string;
  reason: string;
}

export interface ListenSecureOptions {
  /** Address to listen on; all interfaces when omitted. */
  hostname?: string;
  port: number;
  identity: Identity;
  /**
   * Fingerprint (canonical form, as parseFingerprint returns) to site name. Looked up
   * on every connection, so peers added or removed later take effect for new ones.
   */
  trustedPeers: ReadonlyMap<string, string>;
  /** A peer that has not authenticated by then is dropped. */
  handshakeTimeoutMs?: number;
  onPeerRejected?: (rejection: PeerRejection) => void;
}

export interface SecureListener extends AsyncIterable<AuthenticatedConn> {
  readonly addr: { hostname: string; port: number };
  /** Stops accepting; connections already yielded stay open, ones not yet taken are closed. */
  close(): void;
}

export interface ConnectSecureOptions {
  hostname: string;
  port: number;
  identity: Identity;
  expectedFingerprint: string;
  /** Name to report for the peer (defaults to its certificate's common name). */
  peerName?: string;
  /** Covers TCP connect, the key exchange and both proofs. */
  handshakeTimeoutMs?: number;
}

// ---- connections ----

function remoteOf(conn: Deno.Conn): string {
  const a = conn.remoteAddr as Deno.NetAddr;
  return `${a.hostname.includes(":") ? `[${a.hostname}]` : a.hostname}:${a.port}`;
}

/** The largest buffer a link keeps for sealing into (a record's batch, with room). */
const SPARE_MAX = 2 << 20;

/** Closes a connection the runtime may have closed already. */
function closeQuietly(conn: Deno.Conn | undefined): void {
  try {
    conn?.close();
  } catch {
    // closed already
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

/** A TCP connection and its session's two sealers, until either side tears it down. */
class Link implements SecureConn {
  #closed = false;
  #readEnded = false;
  #writeEnded = false;
  /** What the last batch read holds beyond what was taken (a view of the reader's buffer). */
  #rest: Uint8Array | undefined;
  /** The socket writes in call order: each waits for the one before. */
  #writing: Promise<unknown> = Promise.resolve();
  /** A written batch's buffer, for the next batch to be sealed into. */
  #spare: Bytes | undefined;
  private readonly out: Sealer;
  private readonly inbound: Sealer;

  /** The session's keys go to the sealers (native memory) and are wiped here. */
  constructor(
    readonly conn: Deno.TcpConn,
    readonly reader: BatchReader,
    s: Session,
    role: "client" | "server",
    readonly remoteAddr: string,
  ) {
    const [out, inbound] = role === "client"
      ? [s.clientToServer, s.serverToClient]
      : [s.serverToClient, s.clientToServer];
    this.out = new Sealer(out, true);
    this.inbound = new Sealer(inbound, false);
    out.fill(0);
    inbound.fill(0);
    reader.keyed(this.inbound);
  }

  async read(p: Uint8Array): Promise<number | null> {
    let rest = this.#rest;
    if (!rest?.length) {
      try {
        rest = await this.reader.nextView() ?? undefined;
      } catch (e) {
        this.close();
        throw e instanceof HandshakeError ? e : this.#closedEarly();
      }
      if (!rest) {
        this.#readEnded = true;
        this.#settled();
        return null;
      }
    }
    const n = Math.min(p.length, rest.length);
    p.set(rest.subarray(0, n));
    this.#rest = rest.subarray(n);
    return n;
  }

  write(p: Uint8Array): Promise<number> {
    // an empty batch would end the stream
    return p.length === 0 ? Promise.resolve(0) : this.send(p).then(() => p.length);
  }

  async closeWrite(): Promise<void> {
    await this.send(new Uint8Array(0));
    await this.conn.closeWrite();
    this.#writeEnded = true;
    this.#settled();
  }

  /** Sends plain bytes sealed (the handshake's batches too). */
  send(plain: Uint8Array): Promise<void> {
    let sealed: Bytes;
    // a stream's batches are sealed into the buffer the last finished write gave back: a new
    // large array a batch cost more (its pages mapped, faulted in and zeroed) than sealing it
    const spare = this.#spare;
    this.#spare = undefined;
    try {
      sealed = this.out.seal(plain, spare);
    } catch {
      return Promise.reject(this.#closedEarly());
    }
    const done = this.#writing.then(() => writeAll(this.conn, sealed));
    this.#writing = done.then(() => {
      const buf = new Uint8Array(sealed.buffer);
      if (buf.length <= SPARE_MAX && buf.length > (this.#spare?.length ?? 0)) this.#spare = buf;
    }, () => {});
    return done.catch(() => {
      this.close();
      throw this.#closedEarly();
    });
  }

  #closedEarly(): Error {
    return new Error(`connection to ${this.remoteAddr} closed`);
  }

  #settled(): void {
    if (this.#readEnded && this.#writeEnded) this.close();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.conn);
    this.out.free();
    this.inbound.free();
  }
}

// ---- server ----

/** Why the server turned a client away, with what the client presented. */
class Rejection extends Error {
  constructor(readonly fingerprint: string | undefined, reason: string) {
    super(reason);
  }
}

export async function listenSecure(opts: ListenSecureOptions): Promise<SecureListener> {
  for (const fp of opts.trustedPeers.keys()) {
    if (parseFingerprint(fp) !== fp) throw new Error(`trustedPeers key "${fp}" is not in canonical form`);
  }
  const ownFp = opts.identity.fingerprint;
  const ownDer = pemDecode(opts.identity.certPem, "CERTIFICATE");
  const signingKey = await importSigningKey(opts.identity);
  const timeoutMs = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  const ready: AuthenticatedConn[] = [];
  let waiting: ((r: IteratorResult<AuthenticatedConn>) => void) | undefined;
  let closed = false;

  const reject = (remote: string, fingerprint: string | undefined, reason: string) => {
    log.warn("peer rejected", { remote, fingerprint: fingerprint ?? "none", reason });
    opts.onPeerRejected?.({ remote, fingerprint, reason });
  };

  const deliver = (item: AuthenticatedConn) => {
    if (closed) return item.conn.close();
    if (!waiting) return void ready.push(item);
    const w = waiting;
    waiting = undefined;
    w({ value: item, done: false });
  };

  // Nothing the client sends is read but its hello and its proof until the proof holds.
  const authenticate = async (
    conn: Deno.TcpConn,
    remote: string,
    held: { link?: Link },
  ): Promise<AuthenticatedConn> => {
    const reader = new BatchReader(conn);
    const clientHello = await reader.take(HELLO_BYTES).catch(() => {
      throw new Rejection(undefined, "closed before its hello");
    });
    const own = await ephemeral();
    const s = await session(own.key, clientHello, own.hello, "server").catch((e) => {
      throw new Rejection(undefined, (e as Error).message);
    });
    await writeAll(conn, own.hello);
    const link = held.link = new Link(conn, reader, s, "server", remote);
    await link.send(ownDer);
    const batch = await reader.next(PROOF_MAX).catch((e) => {
      throw new Rejection(
        undefined,
        e instanceof HandshakeError ? e.message : "closed before proving its key",
      );
    });
    if (!batch) throw new Rejection(undefined, "closed before proving its key");
    let presented: { der: Bytes; signature: Bytes; fingerprint: string; spki: Bytes };
    try {
      const p = decodeProof(batch);
      presented = { ...p, fingerprint: certificateFingerprint(p.der), spki: subjectPublicKeyInfo(p.der) };
    } catch {
      throw new Rejection(undefined, "unreadable client certificate");
    }
    const fp = presented.fingerprint;
    const peer = opts.trustedPeers.get(fp);
    if (peer === undefined) throw new Rejection(fp, "fingerprint not trusted");
    if (
      !await proofValid(presented.spki, presented.signature, proofMessage("client", s.transcript, fp, ownFp))
    ) {
      throw new Rejection(fp, "invalid key possession proof");
    }
    await link.send(await sign(signingKey, proofMessage("server", s.transcript, fp, ownFp)));
    log.info("peer authenticated", { remote, peer, fingerprint: fp });
    return { conn: link, peer, fingerprint: fp };
  };

  const handle = (conn: Deno.TcpConn) => {
    const remote = remoteOf(conn);
    conn.setNoDelay(true);
    const held: { link?: Link } = {};
    let settled = false;
    const drop = (fingerprint: string | undefined, reason: string) => {
      settled = true;
      clearTimeout(timer);
      if (held.link) held.link.close();
      else closeQuietly(conn);
      reject(remote, fingerprint, reason);
    };
    const timer = setTimeout(
      () => drop(undefined, `handshake timeout: no key possession proof within ${timeoutMs} ms`),
      timeoutMs,
    );
    authenticate(conn, remote, held).then(
      (item) => {
        if (settled) return item.conn.close();
        settled = true;
        clearTimeout(timer);
        deliver(item);
      },
      (e: unknown) => {
        if (settled) return;
        if (e instanceof Rejection) drop(e.fingerprint, e.message);
        else drop(undefined, (e as Error).message);
      },
    );
  };

  const listener = Deno.listen({ hostname: opts.hostname ?? "0.0.0.0", port: opts.port, transport: "tcp" });
  const addr = { hostname: listener.addr.hostname, port: listener.addr.port };
  (async () => {
    while (!closed) {
      try {
        handle(await listener.accept());
      } catch (e) {
        if (closed) return;
        // a failed accept (e.g. too many open files) is retried, not fatal
        log.error("listener error", { error: e as Error });
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  })();
  log.info("listening", { ...addr, fingerprint: ownFp });

  return {
    addr,
    close() {
      if (closed) return;
      closed = true;
      listener.close();
      for (const item of ready.splice(0)) item.conn.close();
      waiting?.({ value: undefined, done: true });
      waiting = undefined;
    },
    [Symbol.asyncIterator]() {
      return {
        next: () => {
          const item = ready.shift();
          if (item) return Promise.resolve({ value: item, done: false as const });
          if (closed) return Promise.resolve({ value: undefined, done: true as const });
          return new Promise<IteratorResult<AuthenticatedConn>>((resolve) => waiting = resolve);
        },
      };
    },
  };
}

// ---- client ----

export async function connectSecure(opts: ConnectSecureOptions): Promise<AuthenticatedConn> {
  const expected = parseFingerprint(opts.expectedFingerprint);
  const where = `${opts.hostname}:${opts.port}`;
  const timeoutMs = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  const ownFp = opts.identity.fingerprint;
  const ownDer = pemDecode(opts.identity.certPem, "CERTIFICATE");
  const signingKey = await importSigningKey(opts.identity);
  let conn: Deno.TcpConn | undefined;
  let link: Link | undefined;
  let abandoned = false;
  const teardown = () => link ? link.close() : closeQuietly(conn);
  const fail = (message: string): never => {
    teardown();
    throw new Error(message);
  };

  const handshake = async (): Promise<AuthenticatedConn> => {
    conn = await Deno.connect({ hostname: opts.hostname, port: opts.port }).catch((e: Error) =>
      fail(`cannot connect to ${where}: ${e.message}`)
    );
    if (abandoned) return fail("abandoned");
    conn.setNoDelay(true);
    const reader = new BatchReader(conn);
    const own = await ephemeral();
    await writeAll(conn, own.hello).catch((e: Error) => fail(`cannot connect to ${where}: ${e.message}`));
    const serverHello = await reader.take(HELLO_BYTES).catch(() =>
      fail(`server at ${where} closed the connection during the key exchange`)
    );
    const s = await session(own.key, own.hello, serverHello, "client").catch((e: Error) =>
      fail(`server at ${where}: ${e.message}`)
    );
    link = new Link(conn, reader, s, "client", remoteOf(conn));
    if (abandoned) return fail("abandoned");
    const der = await reader.next(PROOF_MAX).catch(() => null);
    let got = "none";
    try {
      if (der) got = certificateFingerprint(der);
    } catch {
      got = "none (an unreadable certificate)";
    }
    if (got !== expected) {
      log.warn("peer rejected", {
        remote: where,
        fingerprint: got,
        reason: "server fingerprint does not match the pin",
      });
      return fail(`server at ${where} presented fingerprint ${got}, expected ${expected}`);
    }
    await link.send(
      encodeProof(ownDer, await sign(signingKey, proofMessage("client", s.transcript, ownFp, expected))),
    )
      .catch(() => fail(`server at ${where} refused us (is ${ownFp} among its trusted peers?)`));
    const signature = await reader.next(PROOF_MAX).catch(() => null);
    if (!signature) return fail(`server at ${where} refused us (is ${ownFp} among its trusted peers?)`);
    const message = proofMessage("server", s.transcript, ownFp, expected);
    if (!await proofValid(subjectPublicKeyInfo(der!), signature, message)) {
      log.warn("peer rejected", {
        remote: where,
        fingerprint: expected,
        reason: "invalid key possession proof",
      });
      return fail(`server at ${where} could not prove it holds the key of ${expected}`);
    }
    const peer = opts.peerName ?? certificateCommonName(der!) ?? where;
    log.info("connected to peer", { remote: where, peer, fingerprint: expected });
    return { conn: link, peer, fingerprint: expected };
  };

  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      abandoned = true;
      teardown();
      reject(new Error(`handshake with ${where} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
  });
  const attempt = handshake();
  attempt.catch(() => {}); // when the timeout wins, the attempt's own failure is moot
  try {
    return await Promise.race([attempt, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
