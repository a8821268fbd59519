// Mutually authenticated connections between sites (design and threat model:
// docs/transport-security.md).
//
// TLS 1.3 (node:tls) carries the bytes: confidentiality, integrity, no replay. Each
// side presents its self-signed certificate; the client pins the server's
// fingerprint, the server looks the client's up in trustedPeers. Proof that the peer
// holds the pinned key is NOT left to the TLS layer: Deno 2.9's node:tls accepts a
// version-1 or unparseable certificate without checking the handshake signature, so
// anyone could present a copy of a peer's public key. Instead, right after the
// handshake, each side sends an Ed25519 signature over the TLS session's exporter
// value (getFinished/getPeerFinished in Deno are RFC 8446 exporters), which only
// the key's holder can make and which is useless in any other session. The client
// goes first; the server verifies it before answering with its own, and reads
// nothing else from a client before that.
//
// node:tls rather than Deno.listenTls/connectTls: only node:tls lets the server ask
// for a client certificate and shows each side what its peer presented.
import type { AddressInfo } from "node:net";
import tls, { type TLSSocket } from "node:tls";
import { logger } from "../log.ts";
import type { Bytes } from "./der.ts";
import {
  certificateCommonName,
  certificateFingerprint,
  type Identity,
  importSigningKey,
  parseFingerprint,
  subjectPublicKeyInfo,
} from "./identity.ts";

const log = logger("transport");

const PROOF_CONTEXT = "continuum transport v1: key possession proof";
const PROOF_BYTES = 64; // an Ed25519 signature
/** SNI sent by clients: peers are found by address and authenticated by pin, never by name. */
const SERVER_NAME = "continuum.invalid";
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * Received data queued per connection before the socket is paused. Large on purpose:
 * in Deno 2.9 a node:tls socket that is paused when its peer closes may never report
 * the close, so pausing is kept for a consumer that really falls behind.
 */
const READ_QUEUE_BYTES = 32 << 20;

/** A byte stream to an authenticated peer. */
export interface SecureConn {
  readonly readable: ReadableStream<Uint8Array>;
  /**
   * A chunk's buffer may be reused once its write has resolved. Closing the writer ends
   * this direction cleanly (TLS close_notify, then FIN); the other direction stays
   * open until the peer ends it too.
   */
  readonly writable: WritableStream<Uint8Array>;
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
  /** Covers TCP connect, TLS handshake and both proofs. */
  handshakeTimeoutMs?: number;
}

// ---- authentication ----

interface Presented {
  fingerprint: string;
  der: Bytes;
  spki: Bytes;
}

function presentedCertificate(sock: TLSSocket): Presented | undefined {
  const raw = sock.getPeerCertificate(true)?.raw;
  if (!raw || raw.length === 0) return undefined;
  const der = new Uint8Array(raw);
  return { fingerprint: certificateFingerprint(der), der, spki: subjectPublicKeyInfo(der) };
}

/** The TLS session's exporter value, identical on both ends of one session only. */
function channelBinding(sock: TLSSocket, role: "client" | "server"): Bytes {
  // the client's getFinished() is the server's getPeerFinished()
  const value = role === "client" ? sock.getFinished() : sock.getPeerFinished();
  if (!value || value.length < 32) throw new Error("the TLS layer offers no channel binding");
  return new Uint8Array(value);
}

function proofMessage(
  signer: "client" | "server",
  binding: Bytes,
  clientFp: string,
  serverFp: string,
): Bytes {
  const text = new TextEncoder().encode(
    `${PROOF_CONTEXT}\nsigner=${signer}\nclient=${clientFp}\nserver=${serverFp}\n`,
  );
  const out = new Uint8Array(text.length + binding.length);
  out.set(text);
  out.set(binding, text.length);
  return out;
}

async function makeProof(key: CryptoKey, message: Bytes): Promise<Bytes> {
  return new Uint8Array(await crypto.subtle.sign("Ed25519", key, message));
}

async function proofValid(spki: Bytes, proof: Bytes, message: Bytes): Promise<boolean> {
  try {
    const key = await crypto.subtle.importKey("spki", spki, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify("Ed25519", key, proof, message);
  } catch {
    return false; // not an Ed25519 key
  }
}

// ---- streams ----

function remoteOf(sock: TLSSocket): string {
  const host = sock.remoteAddress ?? "unknown";
  return `${host.includes(":") ? `[${host}]` : host}:${sock.remotePort ?? 0}`;
}

/**
 * What a socket receives after its TLS handshake: first taken a few bytes at a time
 * by the authentication, then handed over as a ReadableStream. One "data" listener
 * from the start, so the socket never has to be paused while authenticating.
 */
class Inbound {
  #sock: TLSSocket;
  #early: Uint8Array[] = [];
  #earlyBytes = 0;
  #ended = false;
  #closed = false;
  #wake: (() => void) | undefined;
  #controller: ReadableStreamDefaultController<Uint8Array> | undefined;

  /** limit: bytes a peer may send before the application takes over; more closes the connection. */
  constructor(sock: TLSSocket, limit: number) {
    this.#sock = sock;
    sock.on("data", (chunk: Uint8Array) => {
      if (this.#controller) {
        this.#controller.enqueue(chunk);
        if ((this.#controller.desiredSize ?? 0) <= 0) sock.pause();
        return;
      }
      this.#early.push(chunk);
      this.#earlyBytes += chunk.length;
      if (this.#earlyBytes > limit) sock.destroy();
      this.#notify();
    });
    sock.once("end", () => {
      this.#ended = true;
      if (!this.#closed) this.#controller?.close();
      this.#notify();
    });
    // Deno's node:tls reports a record that fails to decrypt (a corrupted or forged frame) with
    // "error" and no "close": the stream then waited forever, and the link stalled until the
    // peer's idle timeout (10 s). Found by the fault runner (tests/faults/); regression:
    // tests/transport-corrupt.test.ts.
    sock.once("error", (e: Error) => {
      if (!this.#ended && !this.#closed) this.#controller?.error(e);
      this.#closed = true;
      this.#notify();
      sock.destroy();
    });
    sock.once("close", () => {
      this.#closed = true;
      if (!this.#ended) this.#controller?.error(new Error(`connection to ${remoteOf(sock)} closed`));
      this.#notify();
    });
  }

  #notify() {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  /** Exactly n bytes, or an error once the peer has closed without sending them. */
  async take(n: number): Promise<Bytes> {
    while (this.#earlyBytes < n) {
      if (this.#ended || this.#closed) throw new Error("connection closed");
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    const out = new Uint8Array(n);
    for (let at = 0; at < n;) {
      const head = this.#early[0];
      const used = Math.min(head.length, n - at);
      out.set(head.subarray(0, used), at);
      at += used;
      if (used === head.length) this.#early.shift();
      else this.#early[0] = head.subarray(used);
    }
    this.#earlyBytes -= n;
    return out;
  }

  /** The rest of the byte stream, starting with anything received early. */
  stream(): ReadableStream<Uint8Array> {
    const sock = this.#sock;
    return new ReadableStream<Uint8Array>({
      start: (controller) => {
        for (const chunk of this.#early.splice(0)) controller.enqueue(chunk);
        this.#earlyBytes = 0;
        if (this.#ended) controller.close();
        else if (this.#closed) controller.error(new Error(`connection to ${remoteOf(sock)} closed`));
        else this.#controller = controller;
      },
      pull() {
        if (sock.isPaused()) sock.resume();
      },
      cancel() {
        sock.destroy();
      },
    }, new ByteLengthQueuingStrategy({ highWaterMark: READ_QUEUE_BYTES }));
  }
}

// Web streams over the socket. Node's Duplex.toWeb is not used: in Deno 2.9 closing
// its writable while the readable is still open fails with an AbortError.
function toConn(sock: TLSSocket, inbound: Inbound, remoteAddr: string): SecureConn {
  const closedEarly = () => new Error(`connection to ${remoteAddr} closed`);
  sock.setNoDelay(true);
  const writable = new WritableStream<Uint8Array>({
    write(chunk) {
      if (sock.destroyed) throw closedEarly();
      // a copy: the socket may hold on to it after this write resolves, and callers reuse buffers
      if (sock.write(chunk.slice())) return;
      return new Promise<void>((resolve, reject) => {
        const settle = (err?: Error) => {
          sock.off("drain", onDrain);
          sock.off("close", onClose);
          if (err) reject(err);
          else resolve();
        };
        const onDrain = () => settle();
        const onClose = () => settle(closedEarly());
        sock.on("drain", onDrain);
        sock.on("close", onClose);
      });
    },
    close() {
      return new Promise<void>((resolve, reject) =>
        sock.end((err?: Error | null) => err ? reject(err) : resolve())
      );
    },
    abort() {
      sock.destroy();
    },
  });
  return { readable: inbound.stream(), writable, remoteAddr, close: () => sock.destroy() };
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
  const signingKey = await importSigningKey(opts.identity);
  const timeoutMs = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  const ready: AuthenticatedConn[] = [];
  let waiting: ((r: IteratorResult<AuthenticatedConn>) => void) | undefined;
  let closed = false;

  const reject = (sock: TLSSocket, remote: string, fingerprint: string | undefined, reason: string) => {
    sock.destroy();
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

  // Runs once the TLS handshake is done; nothing the client sends is read but its proof.
  const authenticate = async (
    sock: TLSSocket,
    remote: string,
    inbound: Inbound,
  ): Promise<AuthenticatedConn> => {
    let presented: Presented | undefined;
    try {
      presented = presentedCertificate(sock);
    } catch {
      throw new Rejection(undefined, "unreadable client certificate");
    }
    if (!presented) throw new Rejection(undefined, "no client certificate");
    const fp = presented.fingerprint;
    const peer = opts.trustedPeers.get(fp);
    if (peer === undefined) throw new Rejection(fp, "fingerprint not trusted");
    const binding = channelBinding(sock, "server");
    const proof = await inbound.take(PROOF_BYTES).catch(() => {
      throw new Rejection(fp, "closed before proving its key");
    });
    if (!await proofValid(presented.spki, proof, proofMessage("client", binding, fp, ownFp))) {
      throw new Rejection(fp, "invalid key possession proof");
    }
    sock.write(await makeProof(signingKey, proofMessage("server", binding, fp, ownFp)));
    log.info("peer authenticated", { remote, peer, fingerprint: fp });
    return { conn: toConn(sock, inbound, remote), peer, fingerprint: fp };
  };

  const server = tls.createServer({
    key: opts.identity.keyPem,
    cert: opts.identity.certPem,
    allowHalfOpen: true, // each direction ends on its own (see SecureConn)
    requestCert: true,
    rejectUnauthorized: false, // no CA: pins and proofs decide (see the top of this file)
    minVersion: "TLSv1.3",
    handshakeTimeout: timeoutMs,
  });

  server.on("tlsClientError", (err: Error, sock: TLSSocket) => {
    reject(sock, remoteOf(sock), undefined, `TLS handshake failed: ${err.message}`);
  });

  server.on("secureConnection", (sock: TLSSocket) => {
    const remote = remoteOf(sock);
    sock.on("error", (e: Error) => log.debug("connection error", { remote, error: e }));
    let settled = false;
    const timer = setTimeout(() => {
      settled = true;
      reject(sock, remote, undefined, `no key possession proof within ${timeoutMs} ms`);
    }, timeoutMs);
    // the client's proof is all it may send before it has the server's
    authenticate(sock, remote, new Inbound(sock, PROOF_BYTES)).then(
      (item) => {
        if (settled) return item.conn.close();
        settled = true;
        clearTimeout(timer);
        deliver(item);
      },
      (e: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (e instanceof Rejection) reject(sock, remote, e.fingerprint, e.message);
        else reject(sock, remote, undefined, (e as Error).message);
      },
    );
  });

  await new Promise<void>((resolve, fail) => {
    server.once("error", fail);
    server.listen(opts.port, opts.hostname, () => {
      server.off("error", fail);
      resolve();
    });
  });
  server.on("error", (e: Error) => log.error("listener error", { error: e }));
  const { address, port } = server.address() as AddressInfo;
  const addr = { hostname: address, port };
  log.info("listening", { ...addr, fingerprint: ownFp });

  return {
    addr,
    close() {
      if (closed) return;
      closed = true;
      server.close();
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
  const signingKey = await importSigningKey(opts.identity);
  // allowHalfOpen is honoured by node:tls although its typings omit it
  const options: tls.ConnectionOptions & { allowHalfOpen: boolean } = {
    host: opts.hostname,
    port: opts.port,
    key: opts.identity.keyPem,
    cert: opts.identity.certPem,
    servername: SERVER_NAME,
    allowHalfOpen: true,
    rejectUnauthorized: false, // no CA: pins and proofs decide (see the top of this file)
    minVersion: "TLSv1.3",
  };
  const sock = tls.connect(options);
  sock.on("error", (e: Error) => log.debug("connection error", { remote: where, error: e }));

  let timer: ReturnType<typeof setTimeout> | undefined;
  const fail = (message: string): never => {
    sock.destroy();
    throw new Error(message);
  };
  const handshake = async (): Promise<AuthenticatedConn> => {
    const inbound = await new Promise<Inbound>((resolve, reject) => {
      const onClose = () => reject(new Error("connection closed during the TLS handshake"));
      sock.once("error", reject);
      sock.once("close", onClose);
      sock.once("secureConnect", () => {
        sock.off("error", reject);
        sock.off("close", onClose);
        resolve(new Inbound(sock, READ_QUEUE_BYTES));
      });
    }).catch((e: Error) => fail(`cannot connect to ${where}: ${e.message}`));

    let presented: Presented | undefined;
    try {
      presented = presentedCertificate(sock);
    } catch {
      presented = undefined;
    }
    if (!presented || presented.fingerprint !== expected) {
      const got = presented?.fingerprint ?? "none";
      log.warn("peer rejected", {
        remote: where,
        fingerprint: got,
        reason: "server fingerprint does not match the pin",
      });
      return fail(`server at ${where} presented fingerprint ${got}, expected ${expected}`);
    }
    const binding = channelBinding(sock, "client");
    sock.write(await makeProof(signingKey, proofMessage("client", binding, ownFp, expected)));
    const proof = await inbound.take(PROOF_BYTES).catch(() =>
      fail(`server at ${where} refused us (is ${ownFp} among its trusted peers?)`)
    );
    if (!await proofValid(presented.spki, proof, proofMessage("server", binding, ownFp, expected))) {
      log.warn("peer rejected", {
        remote: where,
        fingerprint: expected,
        reason: "invalid key possession proof",
      });
      return fail(`server at ${where} could not prove it holds the key of ${expected}`);
    }
    const peer = opts.peerName ?? certificateCommonName(presented.der) ?? where;
    log.info("connected to peer", { remote: where, peer, fingerprint: expected });
    return { conn: toConn(sock, inbound, remoteOf(sock)), peer, fingerprint: expected };
  };

  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      sock.destroy();
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
