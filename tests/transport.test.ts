// Site identities and the authenticated transport between sites: keys on disk,
// fingerprints, mutual pinning, refusal of strangers and impostors, timeouts, and
// throughput on loopback.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import tls from "node:tls";
import { createHash } from "node:crypto";
import { setLogSink } from "../src/log.ts";
import { UsageError } from "../src/cli/flags.ts";
import {
  bitString,
  children,
  objectIdentifier,
  readOnly,
  sequence,
  set,
  time,
  unsignedInteger,
  utf8String,
} from "../src/transport/der.ts";
import {
  certificateFingerprint,
  createIdentity,
  generateIdentity,
  type Identity,
  identityPaths,
  loadIdentity,
  parseFingerprint,
  pemDecode,
  pemEncode,
  subjectPublicKeyInfo,
} from "../src/transport/identity.ts";
import { runKeygen } from "../src/transport/keygen-cli.ts";
import { need } from "./lib/env.ts";
import { assertRefused, RawSide } from "./lib/site-handshake.ts";
import { BATCH_MAX, encodeProof, HELLO_BYTES, PROOF_MAX } from "../src/transport/handshake.ts";
import {
  type AuthenticatedConn,
  connectSecure,
  listenSecure,
  type PeerRejection,
  type SecureConn,
  type SecureListener,
} from "../src/transport/secure.ts";

const logLines: string[] = [];
setLogSink((line) => logLines.push(line));

const tempDirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await Deno.makeTempDir({ prefix: "continuum-transport-" });
  tempDirs.push(d);
  return d;
}

const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every chunk a connection reads until its peer's end (an error if it is cut). */
async function* chunks(conn: SecureConn): AsyncGenerator<Uint8Array> {
  const buf = new Uint8Array(1 << 20);
  for (let n; (n = await conn.read(buf)) !== null;) yield buf.subarray(0, n);
}

async function readAll(conn: SecureConn): Promise<string> {
  let text = "";
  for await (const chunk of chunks(conn)) text += dec.decode(chunk, { stream: true });
  return text;
}

async function writeAndClose(conn: SecureConn, text: string): Promise<void> {
  await conn.write(enc.encode(text));
  await conn.closeWrite();
}

interface Server {
  listener: SecureListener;
  port: number;
  accepted: AuthenticatedConn[];
  rejections: PeerRejection[];
  /** Resolves with the next connection the application is handed. */
  next(): Promise<AuthenticatedConn>;
}

async function startServer(
  identity: Identity,
  trusted: Identity[],
  handshakeTimeoutMs = 2000,
): Promise<Server> {
  const rejections: PeerRejection[] = [];
  const listener = await listenSecure({
    hostname: "127.0.0.1",
    port: 0,
    identity,
    trustedPeers: new Map(trusted.map((p) => [p.fingerprint, p.name])),
    handshakeTimeoutMs,
    onPeerRejected: (r) => rejections.push(r),
  });
  const accepted: AuthenticatedConn[] = [];
  const waiters: ((c: AuthenticatedConn) => void)[] = [];
  (async () => {
    for await (const c of listener) {
      accepted.push(c);
      waiters.shift()?.(c);
    }
  })();
  return {
    listener,
    port: listener.addr.port,
    accepted,
    rejections,
    next: () => new Promise((resolve) => waiters.push(resolve)),
  };
}

/** A v1 certificate carrying someone else's public key: the impostor holds a different private key. */
function forgeCertificate(victimCertPem: string): string {
  const name = sequence(set(sequence(objectIdentifier("2.5.4.3"), utf8String("forged"))));
  const ed25519 = sequence(objectIdentifier("1.3.101.112"));
  const validity = sequence(time(new Date(Date.now() - 3_600_000)), time(new Date(Date.UTC(2049, 0, 1))));
  const tbs = sequence(
    unsignedInteger(Uint8Array.of(7)),
    ed25519,
    name,
    validity,
    name,
    subjectPublicKeyInfo(victimCertPem),
  );
  return pemEncode("CERTIFICATE", sequence(tbs, ed25519, bitString(new Uint8Array(64))));
}

const [siteA, siteB, stranger] = await Promise.all([
  createIdentity("site-a"),
  createIdentity("site-b"),
  createIdentity("stranger"),
]);

// ---- identities ----

const id = suite("identity");

id("generate writes key.pem 0600 and cert.pem into a new 0700 directory, and loads back", async () => {
  const dir = `${await tempDir()}/nested/identity`;
  const made = await generateIdentity(dir, { name: "site-x" });
  const paths = identityPaths(dir);
  assert.is((await Deno.stat(dir)).mode! & 0o777, 0o700);
  assert.is((await Deno.stat(paths.key)).mode! & 0o777, 0o600);
  assert.match(await Deno.readTextFile(paths.key), /BEGIN PRIVATE KEY/);
  const loaded = await loadIdentity(dir);
  assert.is(loaded.name, "site-x");
  assert.is(loaded.fingerprint, made.fingerprint);
  assert.is(loaded.certPem, made.certPem);
  assert.is(loaded.keyPem, made.keyPem);
  assert.match(loaded.fingerprint, /^sha256:[0-9a-f]{64}$/);
});

id("an existing identity is kept unless force, which changes the fingerprint", async () => {
  const dir = await tempDir();
  const first = await generateIdentity(dir, { name: "site-x" });
  try {
    await generateIdentity(dir, { name: "site-x" });
    assert.unreachable("overwrote an identity");
  } catch (e) {
    assert.match((e as Error).message, /already exists/);
  }
  assert.is((await loadIdentity(dir)).fingerprint, first.fingerprint);
  const second = await generateIdentity(dir, { name: "site-x", force: true });
  assert.is.not(second.fingerprint, first.fingerprint);
  assert.is((await loadIdentity(dir)).fingerprint, second.fingerprint);
  assert.is((await Deno.stat(identityPaths(dir).key)).mode! & 0o777, 0o600);
});

id("a key file that group or others can read is refused, with the fix in the message", async () => {
  const dir = await tempDir();
  await generateIdentity(dir, { name: "site-x" });
  const { key } = identityPaths(dir);
  await Deno.chmod(key, 0o644);
  try {
    await loadIdentity(dir);
    assert.unreachable("loaded a world-readable key");
  } catch (e) {
    const msg = (e as Error).message;
    assert.match(msg, /mode 0644/);
    assert.match(msg, new RegExp(`chmod 600 ${key}`));
    assert.not.match(msg, /PRIVATE KEY/);
  }
});

id("a key that does not belong to the certificate is refused", async () => {
  const dir = await tempDir();
  await generateIdentity(dir, { name: "site-x" });
  const { key } = identityPaths(dir);
  await Deno.remove(key);
  await Deno.writeTextFile(key, stranger.keyPem, { mode: 0o600 });
  try {
    await loadIdentity(dir);
    assert.unreachable("accepted a foreign key");
  } catch (e) {
    assert.match((e as Error).message, /does not belong to the certificate/);
  }
});

id("the fingerprint covers only the public key: PEM and DER agree, other fields do not matter", () => {
  const der = pemDecode(siteA.certPem, "CERTIFICATE");
  assert.is(certificateFingerprint(der), siteA.fingerprint);
  const spkiHash = createHash("sha256").update(subjectPublicKeyInfo(der)).digest("hex");
  assert.is(siteA.fingerprint, `sha256:${spkiHash}`);
  // change the serial number (a re-issued certificate would): same fingerprint
  const tbs = children(der, readOnly(der, 0x30))[0];
  const serial = children(der, tbs)[1];
  const reissued = der.slice();
  reissued[serial.end - 1] ^= 0xff;
  assert.is(certificateFingerprint(reissued), siteA.fingerprint);
  assert.is.not(certificateFingerprint(siteB.certPem), siteA.fingerprint);
});

/** openssl's verdict on a self-signed certificate: its own signature checked, it is its own anchor. */
async function opensslVerify(certPem: string): Promise<{ ok: boolean; text: string }> {
  const dir = await tempDir();
  const path = `${dir}/cert.pem`;
  await Deno.writeTextFile(path, certPem);
  const out = await new Deno.Command("openssl", {
    args: ["verify", "-check_ss_sig", "-partial_chain", "-trusted", path, path],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { ok: out.success, text: dec.decode(out.stdout) + dec.decode(out.stderr) };
}

id("openssl parses the generated certificate and verifies its Ed25519 signature", async () => {
  if (!need("openssl reads site certificates", { tools: ["openssl"] })) return;
  const dir = await tempDir();
  const idy = await generateIdentity(`${dir}/keys`, { name: "dr-openssl" });
  const parsed = await new Deno.Command("openssl", {
    args: ["x509", "-in", identityPaths(`${dir}/keys`).cert, "-noout", "-text"],
    stdout: "piped",
  }).output();
  assert.ok(parsed.success);
  const text = dec.decode(parsed.stdout);
  assert.match(text, /Version: 3 \(0x2\)/);
  assert.match(text, /Signature Algorithm: ED25519/);
  assert.match(text, /Subject: CN\s*=\s*dr-openssl/);
  assert.match(text, /CA:FALSE/);
  assert.match(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
  const good = await opensslVerify(idy.certPem);
  assert.ok(good.ok, good.text);
  // the same certificate with one bit of its signature flipped: openssl must refuse it
  const der = pemDecode(idy.certPem, "CERTIFICATE");
  der[der.length - 1] ^= 0x01;
  const bad = await opensslVerify(pemEncode("CERTIFICATE", der));
  assert.not.ok(bad.ok, bad.text);
  assert.match(bad.text, /signature/i);
});

id("fingerprints given by people are canonicalised or refused", () => {
  assert.is(parseFingerprint(`  ${siteA.fingerprint.toUpperCase()} `), siteA.fingerprint);
  assert.throws(() => parseFingerprint("sha256:abc"), /not a fingerprint/);
  assert.throws(() => parseFingerprint(siteA.fingerprint.replace("sha256:", "md5:")), /not a fingerprint/);
});

id("the private key does not show when an identity is printed or serialised", () => {
  const body = siteA.keyPem.split("\n")[1];
  assert.not.match(JSON.stringify(siteA), body);
  assert.not.match(Deno.inspect(siteA), body);
  assert.match(siteA.keyPem, body); // still there for whoever asks for it
});

id.run();

// ---- keygen command ----

const kg = suite("keygen");

kg("prints the fingerprint, paths and what to give the peer; --show repeats the fingerprint", async () => {
  const dir = await tempDir();
  const out: string[] = [];
  await runKeygen(["--dir", dir, "--name", "site-k"], (l) => out.push(l));
  const values = Object.fromEntries(
    out.filter((l) => l.includes("=") && !l.startsWith("#")).map((l) => {
      const i = l.indexOf("=");
      return [l.slice(0, i), l.slice(i + 1)];
    }),
  );
  const loaded = await loadIdentity(dir);
  assert.is(values.fingerprint, loaded.fingerprint);
  assert.is(values.name, "site-k");
  assert.is(values.cert, identityPaths(dir).cert);
  assert.is(values.key, identityPaths(dir).key);
  assert.ok(out.some((l) => /fingerprint/.test(l) && /peer/.test(l) && l.startsWith("#")));
  assert.not.match(out.join("\n"), /PRIVATE KEY/);

  const shown: string[] = [];
  await runKeygen(["--show", "--dir", dir], (l) => shown.push(l));
  assert.ok(shown.includes(`fingerprint=${loaded.fingerprint}`));
});

kg("usage errors: --dir missing, unknown flag, --show with --force", async () => {
  for (const args of [[], ["--dir", "/tmp/x", "--bogus"], ["--show", "--force", "--dir", "/tmp/x"]]) {
    try {
      await runKeygen(args, () => {});
      assert.unreachable(`accepted ${args.join(" ")}`);
    } catch (e) {
      assert.instance(e, UsageError);
    }
  }
});

kg("refuses to replace an identity without --force", async () => {
  const dir = await tempDir();
  await runKeygen(["--dir", dir, "--name", "a"], () => {});
  try {
    await runKeygen(["--dir", dir, "--name", "a"], () => {});
    assert.unreachable("replaced an identity");
  } catch (e) {
    assert.match((e as Error).message, /already exists/);
  }
});

kg.run();

// ---- transport ----

const tr = suite("transport");

tr("mutually pinned sites exchange data both ways", async () => {
  const server = await startServer(siteA, [siteB]);
  const accepted = server.next();
  const client = await connectSecure({
    hostname: "127.0.0.1",
    port: server.port,
    identity: siteB,
    expectedFingerprint: siteA.fingerprint,
  });
  const side = await accepted;
  assert.is(side.peer, "site-b");
  assert.is(side.fingerprint, siteB.fingerprint);
  assert.is(client.peer, "site-a");
  assert.is(client.fingerprint, siteA.fingerprint);

  // one buffer, refilled after each write resolves, as a frame writer would
  const buf = new Uint8Array(5);
  for (const word of ["write", "again"]) {
    enc.encodeInto(word, buf);
    await client.conn.write(buf);
  }
  await client.conn.closeWrite();
  assert.is(await readAll(side.conn), "writeagain");
  await writeAndClose(side.conn, "acks from a");
  assert.is(await readAll(client.conn), "acks from a");
  server.listener.close();
});

tr("a client with an unknown key is dropped before the server reads anything from it", async () => {
  const server = await startServer(siteA, [siteB]);
  logLines.length = 0;
  // a stranger that proves its own key and sends application bytes straight away
  const raw = await RawSide.client(server.port);
  await raw.proveAsClient(stranger, siteA.fingerprint);
  await raw.send(enc.encode("WRITE block=0 len=4096 ..."));
  await raw.closed();
  raw.close();
  await sleep(50);
  assert.is(server.accepted.length, 0, "the application was handed a connection");
  assert.is(server.rejections.length, 1);
  assert.is(server.rejections[0].fingerprint, stranger.fingerprint);
  assert.is(server.rejections[0].reason, "fingerprint not trusted");

  const warn = logLines.map((l) => JSON.parse(l)).find((r) => r.msg === "peer rejected");
  assert.ok(warn, "no log line for the rejection");
  assert.is(warn.level, "warn");
  assert.is(warn.fingerprint, stranger.fingerprint);
  assert.match(warn.remote, /^127\.0\.0\.1:\d+$/);
  const keyBody = stranger.keyPem.split("\n")[1];
  assert.not.match(logLines.join("\n"), /PRIVATE KEY/);
  assert.not.match(logLines.join("\n"), keyBody);

  // the same stranger through connectSecure learns it was refused
  await assertRefused(server.port, stranger, siteA.fingerprint, /refused us/);
  assert.is(server.accepted.length, 0);
  server.listener.close();
});

tr("an impostor presenting a trusted site's public key without its private key is refused", async () => {
  const server = await startServer(siteA, [siteB]);
  const impostor = await createIdentity("impostor");
  const forged = forgeCertificate(siteB.certPem);
  assert.is(certificateFingerprint(forged), siteB.fingerprint); // the pin alone would let it in
  // the best it can do: the real client, signing with its own key
  const posing = { name: "site-b", fingerprint: siteB.fingerprint, certPem: forged, keyPem: impostor.keyPem };
  await assertRefused(server.port, posing, siteA.fingerprint, /refused us/);
  await sleep(50);
  assert.is(server.accepted.length, 0, "the impostor was accepted");
  assert.is(server.rejections.length, 1);
  assert.is(server.rejections[0].fingerprint, siteB.fingerprint);
  assert.is(server.rejections[0].reason, "invalid key possession proof");
  server.listener.close();
});

tr("a client refuses a server that impersonates the pinned site", async () => {
  const impostor = await createIdentity("impostor");
  const posing = { name: "site-a", fingerprint: siteA.fingerprint, certPem: forgeCertificate(siteA.certPem) };
  Object.defineProperty(posing, "keyPem", { value: impostor.keyPem, enumerable: false });
  const fake = await startServer(posing as Identity, [siteB]);
  try {
    await assertRefused(fake.port, siteB, siteA.fingerprint, /could not prove it holds the key/);
  } finally {
    fake.listener.close();
  }
});

tr("a relaying man in the middle cannot pass one session's proofs off in another", async () => {
  const server = await startServer(siteA, [siteB]);
  // it runs a key exchange with each side and carries the client's proof from one session to the other
  const relay = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const relayed = (async () => {
    const front = await RawSide.server(await relay.accept());
    await front.send(pemDecode(siteA.certPem, "CERTIFICATE")); // the site's certificate is no secret
    const proof = await front.reader.next(PROOF_MAX);
    const back = await RawSide.client(server.port);
    await back.reader.next(PROOF_MAX);
    await back.send(proof!);
    await back.closed();
    back.close();
    front.close();
  })();
  try {
    await assertRefused(relay.addr.port, siteB, siteA.fingerprint, /refused us/);
  } finally {
    await relayed;
    relay.close();
  }
  assert.is(server.accepted.length, 0);
  assert.is(server.rejections.length, 1);
  assert.is(server.rejections[0].fingerprint, siteB.fingerprint);
  assert.is(server.rejections[0].reason, "invalid key possession proof");
  server.listener.close();
});

tr("a client pinning another fingerprint refuses to connect", async () => {
  const server = await startServer(siteA, [siteB]);
  await assertRefused(
    server.port,
    siteB,
    stranger.fingerprint,
    new RegExp(`presented fingerprint ${siteA.fingerprint}`),
  );
  server.listener.close();
});

tr("silent peers are dropped after the handshake timeout", async () => {
  const server = await startServer(siteA, [siteB], 300);
  // silent right after TCP connect
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  const started = performance.now();
  const n = await tcp.read(new Uint8Array(16)).catch(() => null);
  const waited = performance.now() - started;
  tcp.close();
  assert.is(n, null, "the server did not close the connection");
  assert.ok(waited >= 250 && waited < 3000, `closed after ${waited} ms`);

  // silent after the key exchange (no proof)
  const raw = await RawSide.client(server.port);
  await raw.closed();
  raw.close();
  await sleep(20);
  assert.is(server.rejections.length, 2);
  assert.match(server.rejections[0].reason, /timeout/i);
  assert.match(server.rejections[1].reason, /no key possession proof/);
  assert.is(server.accepted.length, 0);
  server.listener.close();
});

tr(
  "what is not a site link's hello is refused at once: garbage, a TLS client of an older version",
  async () => {
    const server = await startServer(siteA, [siteB]);
    const garbage = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    await garbage.write(new Uint8Array(HELLO_BYTES).fill(0x41));
    assert.is(await garbage.read(new Uint8Array(16)).catch(() => null), null, "closed");
    garbage.close();
    const old = tls.connect({
      host: "127.0.0.1",
      port: server.port,
      key: siteB.keyPem,
      cert: siteB.certPem,
      rejectUnauthorized: false,
    });
    old.on("error", () => {});
    await new Promise((r) => old.once("close", r));
    await sleep(20);
    assert.is(server.rejections.length, 2);
    for (const r of server.rejections) assert.is(r.reason, "not a Continuum site link (bad hello)");
    assert.is(server.accepted.length, 0);
    server.listener.close();
  },
);

tr(
  "a proof that is not one is refused: garbage, a certificate cut short, a batch past the proof limit",
  async () => {
    const server = await startServer(siteA, [siteB]);
    const cert = pemDecode(siteB.certPem, "CERTIFICATE");
    const cases: [Uint8Array, RegExp][] = [
      [enc.encode("not a proof"), /unreadable client certificate/],
      [encodeProof(cert.subarray(0, cert.length - 9), new Uint8Array(64)), /unreadable client certificate/],
      [new Uint8Array(PROOF_MAX + 1), /at most/],
    ];
    for (const [i, [proof, why]] of cases.entries()) {
      const raw = await RawSide.client(server.port);
      await raw.reader.next(PROOF_MAX); // the server's certificate
      await raw.send(proof);
      await raw.closed(); // the server records the rejection as it closes
      raw.close();
      assert.is(server.rejections.length, i + 1);
      assert.match(server.rejections[i].reason, why);
    }
    assert.is(server.accepted.length, 0);
    server.listener.close();
  },
);

/** A session authenticated by hand as site-b, and the server's side of it. */
async function rawSession(server: Server): Promise<{ raw: RawSide; side: AuthenticatedConn }> {
  const accepted = server.next();
  const raw = await RawSide.client(server.port);
  await raw.proveAsClient(siteB, siteA.fingerprint);
  assert.ok(await raw.reader.next(PROOF_MAX), "the server's proof");
  return { raw, side: await accepted };
}

/** What the server's application reads: the text, and how the stream ended. */
async function readOutcome(conn: SecureConn): Promise<{ text: string; error?: string }> {
  let text = "";
  try {
    for await (const c of chunks(conn)) text += dec.decode(c);
    return { text };
  } catch (e) {
    return { text, error: (e as Error).message };
  }
}

tr(
  "a sealed batch altered, replayed or cut short ends the stream with an error; a sealed end ends it cleanly",
  async () => {
    const server = await startServer(siteA, [siteB]);
    // altered: one bit of the ciphertext
    let { raw, side } = await rawSession(server);
    await raw.send(enc.encode("first "));
    const altered = raw.seal(enc.encode("second"));
    altered[6] ^= 1;
    await raw.sendRaw(altered);
    let out = await readOutcome(side.conn);
    assert.is(out.text, "first ");
    assert.match(out.error ?? "", /failed its check/);
    raw.close();

    // replayed: the same batch twice
    ({ raw, side } = await rawSession(server));
    const once = raw.seal(enc.encode("pay 1 "));
    await raw.sendRaw(once);
    await raw.sendRaw(once);
    out = await readOutcome(side.conn);
    assert.is(out.text, "pay 1 ");
    assert.match(out.error ?? "", /failed its check/);
    raw.close();

    // cut short: the connection ends without the sealed end of stream
    ({ raw, side } = await rawSession(server));
    await raw.send(enc.encode("partial"));
    await raw.conn.closeWrite();
    out = await readOutcome(side.conn);
    assert.is(out.text, "partial");
    assert.match(out.error ?? "", /closed/);
    raw.close();

    // a batch longer than any side seals
    ({ raw, side } = await rawSession(server));
    const huge = new Uint8Array(4);
    new DataView(huge.buffer).setUint32(0, BATCH_MAX + 1);
    await raw.sendRaw(huge);
    out = await readOutcome(side.conn);
    assert.match(out.error ?? "", /at most/);
    raw.close();

    // the sealed end of stream: a clean end, and the other direction still carries data
    ({ raw, side } = await rawSession(server));
    await raw.send(enc.encode("done"));
    await raw.send(new Uint8Array(0));
    out = await readOutcome(side.conn);
    assert.equal(out, { text: "done" });
    await writeAndClose(side.conn, "answer");
    assert.equal(dec.decode((await raw.reader.next())!), "answer");
    assert.is(await raw.reader.next(), null, "the server's sealed end");
    raw.close();
    server.listener.close();
  },
);

tr("throughput: 256 MiB through one connection arrives intact", async () => {
  const total = 256 << 20, chunkSize = 256 << 10;
  const pool = new Uint8Array(2 << 20);
  for (let i = 0; i < pool.length; i += 65536) crypto.getRandomValues(pool.subarray(i, i + 65536));
  const pieces: Uint8Array[] = [];
  for (let i = 0; pieces.length * chunkSize < total; i++) {
    const at = (i * 4099) % (pool.length - chunkSize); // every chunk differs
    pieces.push(pool.subarray(at, at + chunkSize));
  }
  const want = createHash("sha256");
  for (const c of pieces) want.update(c);
  const wantDigest = want.digest("hex");

  const server = await startServer(siteA, [siteB]);
  const received = server.next().then(async ({ conn }) => {
    const h = createHash("sha256");
    let bytes = 0;
    for await (const c of chunks(conn)) {
      h.update(c);
      bytes += c.length;
    }
    return { bytes, digest: h.digest("hex") };
  });
  const client = await connectSecure({
    hostname: "127.0.0.1",
    port: server.port,
    identity: siteB,
    expectedFingerprint: siteA.fingerprint,
  });
  const started = performance.now();
  for (const c of pieces) await client.conn.write(c);
  await client.conn.closeWrite();
  const got = await received;
  const secs = (performance.now() - started) / 1000;
  console.log(
    `throughput: ${(total / 1e6 / secs).toFixed(0)} MB/s (256 MiB, sealed batches on loopback, one process)`,
  );
  assert.is(got.bytes, total);
  assert.is(got.digest, wantDigest);
  client.conn.close();
  server.listener.close();
});

tr("writes in flight together, of many sizes, arrive intact and in order", async () => {
  // a link seals into the buffer of a finished write: one still in flight must keep its own
  const pool = new Uint8Array(1 << 20);
  for (let i = 0; i < pool.length; i += 65536) crypto.getRandomValues(pool.subarray(i, i + 65536));
  const pieces = Array.from({ length: 64 }, (_, i) => {
    const len = [1, 700, 65536, 300_000, 4168][i % 5] + i;
    const at = (i * 7919) % (pool.length - len);
    return pool.subarray(at, at + len);
  });
  const server = await startServer(siteA, [siteB]);
  const received = server.next().then(async ({ conn }) => {
    const h = createHash("sha256");
    for await (const c of chunks(conn)) h.update(c);
    return h.digest("hex");
  });
  const client = await connectSecure({
    hostname: "127.0.0.1",
    port: server.port,
    identity: siteB,
    expectedFingerprint: siteA.fingerprint,
  });
  for (let round = 0; round < 4; round++) await Promise.all(pieces.map((c) => client.conn.write(c)));
  for (const c of pieces) await client.conn.write(c); // one at a time: each reuses the last buffer
  await client.conn.closeWrite();
  const want = createHash("sha256");
  for (let round = 0; round < 5; round++) for (const c of pieces) want.update(c);
  assert.is(await received, want.digest("hex"));
  client.conn.close();
  server.listener.close();
});

tr.after(async () => {
  for (const d of tempDirs) await Deno.remove(d, { recursive: true }).catch(() => {});
});

tr.run();
