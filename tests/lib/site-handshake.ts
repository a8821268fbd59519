// The site link's protocol spoken by hand, from the pieces src/transport/secure.ts uses:
// what tests need to play a stranger, an impostor, a relay in the middle or a peer that
// tampers with its own sealed stream.
import {
  BatchReader,
  encodeProof,
  ephemeral,
  HELLO_BYTES,
  PROOF_MAX,
  proofMessage,
  Sealer,
  session,
  sign,
} from "../../src/transport/handshake.ts";
import * as assert from "uvu/assert";
import { type Identity, importSigningKey, pemDecode } from "../../src/transport/identity.ts";
import { connectSecure } from "../../src/transport/secure.ts";
import type { Bytes } from "../../src/transport/der.ts";

/** Who a hand-made proof claims to be: the certificate shown, and the key that really signs. */
export interface Claim {
  certPem: string;
  /** The private key (PKCS#8 PEM) that signs, whoever the certificate names. */
  keyPem: string;
  fingerprint: string;
}

/** One side of a session after the hellos: sealed batches both ways. */
export class RawSide {
  private constructor(
    readonly conn: Deno.TcpConn,
    readonly transcript: Bytes,
    readonly out: Sealer,
    readonly reader: BatchReader,
  ) {}

  /** Connects and exchanges hellos as a client. */
  static async client(port: number): Promise<RawSide> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const reader = new BatchReader(conn);
    const own = await ephemeral();
    await conn.write(own.hello);
    const s = await session(own.key, own.hello, await reader.take(HELLO_BYTES), "client");
    reader.keyed(new Sealer(s.serverToClient, false));
    return new RawSide(conn, s.transcript, new Sealer(s.clientToServer, true), reader);
  }

  /** Exchanges hellos as the server on an accepted connection. */
  static async server(conn: Deno.TcpConn): Promise<RawSide> {
    const reader = new BatchReader(conn);
    const clientHello = await reader.take(HELLO_BYTES);
    const own = await ephemeral();
    await conn.write(own.hello);
    const s = await session(own.key, clientHello, own.hello, "server");
    reader.keyed(new Sealer(s.clientToServer, false));
    return new RawSide(conn, s.transcript, new Sealer(s.serverToClient, true), reader);
  }

  /** Sealed bytes as they go on the wire (a test may alter or repeat them). */
  seal(plain: Uint8Array): Bytes {
    return this.out.seal(plain);
  }

  async sendRaw(bytes: Uint8Array): Promise<void> {
    for (let at = 0; at < bytes.length;) at += await this.conn.write(bytes.subarray(at));
  }

  send(plain: Uint8Array): Promise<void> {
    return this.sendRaw(this.seal(plain));
  }

  /** Takes the server's certificate, then sends the client's proof for this session as `claim` can make it. */
  async proveAsClient(claim: Claim, serverFp: string): Promise<void> {
    await this.reader.next(PROOF_MAX);
    await this.send(
      await proofBatch(claim, proofMessage("client", this.transcript, claim.fingerprint, serverFp)),
    );
  }

  /** Resolves once the peer has closed the connection. */
  async closed(): Promise<void> {
    const buf = new Uint8Array(65536);
    while (await this.conn.read(buf).catch(() => null) !== null) { /* drain */ }
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // closed already
    }
    this.out.free();
  }
}

export async function proofBatch(claim: Claim, message: Bytes): Promise<Bytes> {
  const key = await importSigningKey({
    name: "",
    fingerprint: claim.fingerprint,
    certPem: claim.certPem,
    keyPem: claim.keyPem,
  });
  return encodeProof(pemDecode(claim.certPem, "CERTIFICATE"), await sign(key, message));
}

/** connectSecure as `identity`, pinning `expected`, must fail with a message that matches `why`. */
export async function assertRefused(
  port: number,
  identity: Identity,
  expected: string,
  why: RegExp,
): Promise<void> {
  try {
    await connectSecure({ hostname: "127.0.0.1", port, identity, expectedFingerprint: expected });
  } catch (e) {
    assert.match((e as Error).message, why);
    return;
  }
  assert.unreachable(`connected as ${identity.name}`);
}
