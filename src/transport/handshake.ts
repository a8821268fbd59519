// The pieces of the site link's protection (design and threat model:
// docs/transport-security.md): the hellos that carry each side's ephemeral X25519 key,
// the session keys derived from them, the key possession proofs (Ed25519 signatures over
// the session's transcript), and the sealed batches that carry every byte after the hellos.
// secure.ts composes them into connections; tests compose them into attackers.
import { native } from "../native/ffi.ts";
import type { Bytes } from "./der.ts";

const MAGIC = [0x43, 0x4e, 0x53, 0x4c]; // "CNSL"
const VERSION = 1;
/** A hello: magic, version, 3 zero bytes, the X25519 public key, 32 random bytes. */
export const HELLO_BYTES = 72;
/** An Ed25519 signature. */
const SIGNATURE_BYTES = 64;
/** The largest batch either side seals; a larger write is sealed as several. */
export const BATCH_MAX = 1 << 20;
/** The largest proof batch: a certificate and a signature (ours are about 300 bytes). */
export const PROOF_MAX = 8 << 10;
/** A batch's length prefix and its tag. */
const BATCH_OVERHEAD = 20;
const PROOF_CONTEXT = "continuum site link v1: key possession proof";
const KEY_INFO = new TextEncoder().encode("continuum site link v1: keys c2s s2c");

/** The peer broke the protocol: a bad hello, a batch that fails its tag, a malformed proof. */
export class HandshakeError extends Error {}

export interface Ephemeral {
  key: CryptoKey;
  /** This side's hello, carrying the public half. */
  hello: Bytes;
}

export async function ephemeral(): Promise<Ephemeral> {
  const pair = await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]) as CryptoKeyPair;
  const hello = new Uint8Array(HELLO_BYTES);
  hello.set(MAGIC);
  hello[4] = VERSION;
  hello.set(new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey)), 8);
  crypto.getRandomValues(hello.subarray(40));
  return { key: pair.privateKey, hello };
}

function helloKey(hello: Uint8Array): Uint8Array {
  if (hello.length !== HELLO_BYTES || MAGIC.some((b, i) => hello[i] !== b)) {
    throw new HandshakeError("not a Continuum site link (bad hello)");
  }
  if (hello[4] !== VERSION) {
    throw new HandshakeError(`site link version ${hello[4]} (this side speaks ${VERSION})`);
  }
  return hello.subarray(8, 40);
}

export interface Session {
  /** SHA-256 of both hellos: what the proofs sign, so a proof holds in this session only. */
  transcript: Bytes;
  clientToServer: Bytes;
  serverToClient: Bytes;
}

/** The session's keys, from our ephemeral key and both hellos (the client's first). */
export async function session(
  own: CryptoKey,
  clientHello: Bytes,
  serverHello: Bytes,
  role: "client" | "server",
): Promise<Session> {
  const peer = helloKey(role === "client" ? serverHello : clientHello);
  const both = new Uint8Array(2 * HELLO_BYTES);
  both.set(clientHello);
  both.set(serverHello, HELLO_BYTES);
  const transcript = new Uint8Array(await crypto.subtle.digest("SHA-256", both));
  let shared: Bytes;
  try {
    const pub = await crypto.subtle.importKey("raw", new Uint8Array(peer), { name: "X25519" }, false, []);
    shared = new Uint8Array(await crypto.subtle.deriveBits({ name: "X25519", public: pub }, own, 256));
  } catch {
    throw new HandshakeError("the peer's key exchange value is invalid"); // e.g. a low-order point
  }
  const ikm = await crypto.subtle.importKey("raw", shared, "HKDF", false, ["deriveBits"]);
  shared.fill(0);
  const keys = new Uint8Array(
    await crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: transcript, info: KEY_INFO },
      ikm,
      512,
    ),
  );
  return { transcript, clientToServer: keys.slice(0, 32), serverToClient: keys.slice(32) };
}

/** What a side signs: its role, both sites' fingerprints and the session's transcript. */
export function proofMessage(
  signer: "client" | "server",
  transcript: Bytes,
  clientFp: string,
  serverFp: string,
) {
  const text = new TextEncoder().encode(
    `${PROOF_CONTEXT}\nsigner=${signer}\nclient=${clientFp}\nserver=${serverFp}\n`,
  );
  const out = new Uint8Array(text.length + transcript.length);
  out.set(text);
  out.set(transcript, text.length);
  return out;
}

/** A proof batch: [u16 certificate length][certificate DER][signature]. */
export function encodeProof(certDer: Uint8Array, signature: Uint8Array): Bytes {
  const out = new Uint8Array(2 + certDer.length + signature.length);
  new DataView(out.buffer).setUint16(0, certDer.length);
  out.set(certDer, 2);
  out.set(signature, 2 + certDer.length);
  return out;
}

export function decodeProof(b: Uint8Array): { der: Bytes; signature: Bytes } {
  const len = b.length >= 2 ? (b[0] << 8) | b[1] : -1;
  if (len < 0 || b.length !== 2 + len + SIGNATURE_BYTES) {
    throw new HandshakeError("malformed key possession proof");
  }
  return { der: b.slice(2, 2 + len), signature: b.slice(2 + len) };
}

export async function sign(key: CryptoKey, message: Bytes): Promise<Bytes> {
  return new Uint8Array(await crypto.subtle.sign("Ed25519", key, message));
}

export async function proofValid(spki: Bytes, signature: Bytes, message: Bytes): Promise<boolean> {
  try {
    const key = await crypto.subtle.importKey("spki", spki, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify("Ed25519", key, signature, message);
  } catch {
    return false; // not an Ed25519 key
  }
}

/** One direction's sealer (native/seal.c: AES-256-GCM, counter nonces). */
export class Sealer {
  #p: Deno.PointerValue;

  constructor(key: Bytes, encrypt: boolean) {
    this.#p = native().cn_sealer_new(key, encrypt ? 1 : 0);
    if (this.#p === null) throw new Error("out of memory for a sealer");
  }

  /**
   * `plain` as one or more sealed batches (an empty one is the end of the stream), in the
   * beginning of `into` when it is large enough (a view of it), else in a new array.
   */
  seal(plain: Uint8Array, into?: Bytes): Bytes {
    const n = Math.max(1, Math.ceil(plain.length / BATCH_MAX));
    const size = plain.length + n * BATCH_OVERHEAD;
    const out = into && into.length >= size ? into.subarray(0, size) : new Uint8Array(size);
    for (let i = 0, at = 0; i < n; i++) {
      const part = plain.subarray(i * BATCH_MAX, Math.min(plain.length, (i + 1) * BATCH_MAX));
      if (native().cn_seal(this.#live(), part, part.length, out.subarray(at)) !== 0) {
        throw new Error("sealing failed");
      }
      at += part.length + BATCH_OVERHEAD;
    }
    return out;
  }

  /** Opens one batch in place (`batch`: as sealed); returns the plain bytes, a view of it. */
  open(batch: Bytes): Bytes {
    const len = batch.length - BATCH_OVERHEAD;
    if (native().cn_unseal(this.#live(), batch, len) !== 0) {
      throw new HandshakeError("a sealed batch failed its check (altered, replayed or reordered)");
    }
    return batch.subarray(4, 4 + len);
  }

  #live(): NonNullable<Deno.PointerValue> {
    if (this.#p === null) throw new Error("connection closed");
    return this.#p;
  }

  free(): void {
    if (this.#p !== null) native().cn_sealer_free(this.#p);
    this.#p = null;
  }
}

/**
 * Reads a connection: first a few bytes as they come (the hellos), then sealed batches once
 * keyed. A zero-length batch is the peer's end of the stream; a connection that ends without
 * one was cut (or truncated by someone in between) and is an error.
 */
export class BatchReader {
  #buf: Bytes = new Uint8Array(256 << 10);
  #start = 0;
  #end = 0;
  #sealer: Sealer | undefined;
  ended = false;

  constructor(private readonly conn: Deno.Conn) {}

  keyed(sealer: Sealer): void {
    this.#sealer = sealer;
  }

  /** Exactly n bytes in clear (before keying). */
  async take(n: number): Promise<Bytes> {
    while (this.#end - this.#start < n) await this.#fill(n);
    const out = this.#buf.slice(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  /** The next batch's plain bytes (a copy of its own), or null at the peer's end of the stream. */
  async next(limit = BATCH_MAX): Promise<Bytes | null> {
    return (await this.nextView(limit))?.slice() ?? null;
  }

  /**
   * The next batch's plain bytes as a view of the reader's buffer, valid until the next call,
   * or null at the peer's end of the stream.
   */
  async nextView(limit = BATCH_MAX): Promise<Bytes | null> {
    if (this.ended) return null;
    const sealer = this.#sealer!;
    while (true) {
      const have = this.#end - this.#start;
      if (have >= 4) {
        const len = new DataView(this.#buf.buffer, this.#start).getUint32(0);
        if (len > limit) throw new HandshakeError(`a sealed batch of ${len} bytes (at most ${limit})`);
        const size = len + BATCH_OVERHEAD;
        if (have >= size) {
          const plain = sealer.open(this.#buf.subarray(this.#start, this.#start + size));
          this.#start += size;
          if (len === 0) {
            this.ended = true;
            return null;
          }
          return plain;
        }
        await this.#fill(size);
      } else await this.#fill(4);
    }
  }

  /** Reads once, with room for `want` bytes from the current start. */
  async #fill(want: number): Promise<void> {
    if (this.#buf.length - this.#start < want || this.#end === this.#buf.length) {
      const keep = this.#buf.subarray(this.#start, this.#end);
      const buf = want > this.#buf.length ? new Uint8Array(Math.max(want, 2 * this.#buf.length)) : this.#buf;
      buf.set(keep); // set() copies correctly within one buffer too
      this.#buf = buf;
      this.#end = keep.length;
      this.#start = 0;
    }
    const n = await this.conn.read(this.#buf.subarray(this.#end));
    if (n === null) throw new Error("connection closed");
    this.#end += n;
  }
}
