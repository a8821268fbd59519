// A site's identity: an Ed25519 key pair and a self-signed X.509 certificate for it,
// made with WebCrypto and the DER writer in der.ts. Peers pin each other by the
// fingerprint of the certificate's SubjectPublicKeyInfo (see docs/transport-security.md),
// so no CA is involved and re-issuing a certificate for the same key keeps the pin.
import { createHash } from "node:crypto";
import {
  bitString,
  boolean,
  type Bytes,
  children,
  type Element,
  explicit,
  objectIdentifier,
  octetString,
  readOnly,
  sequence,
  set,
  smallInteger,
  time,
  unsignedInteger,
  utf8String,
} from "./der.ts";

export const KEY_FILE = "key.pem";
export const CERT_FILE = "cert.pem";

const ED25519 = "1.3.101.112";
const COMMON_NAME = "2.5.4.3";
const BASIC_CONSTRAINTS = "2.5.29.19";
const KEY_USAGE = "2.5.29.15";
const EXT_KEY_USAGE = "2.5.29.37";
const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";

export interface Identity {
  /** The site name, kept as the certificate's common name. */
  readonly name: string;
  /** `sha256:` + 64 lowercase hex digits over the certificate's SubjectPublicKeyInfo. */
  readonly fingerprint: string;
  readonly certPem: string;
  /** PKCS#8 PEM. Not enumerable, so logging or serialising an identity cannot leak it. */
  readonly keyPem: string;
}

function makeIdentity(name: string, fingerprint: string, certPem: string, keyPem: string): Identity {
  const id = { name, fingerprint, certPem };
  Object.defineProperty(id, "keyPem", { value: keyPem, enumerable: false });
  return Object.freeze(id) as Identity;
}

export function identityPaths(dir: string): { key: string; cert: string } {
  const base = dir.endsWith("/") ? dir : `${dir}/`;
  return { key: base + KEY_FILE, cert: base + CERT_FILE };
}

// ---- PEM ----

export function pemEncode(label: string, der: Uint8Array): string {
  const b64 = btoa(Array.from(der, (b) => String.fromCharCode(b)).join(""));
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** The first PEM block with this label. */
export function pemDecode(text: string, label: string): Bytes {
  const m = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`).exec(text);
  if (!m) throw new Error(`no PEM "${label}" block found`);
  return Uint8Array.from(atob(m[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0));
}

// ---- reading certificates ----

function tbsFields(certDer: Uint8Array): { buf: Uint8Array; fields: Element[] } {
  const cert = readOnly(certDer, 0x30);
  const [tbs] = children(certDer, cert);
  if (!tbs || tbs.tag !== 0x30) throw new Error("not an X.509 certificate");
  const fields = children(certDer, tbs);
  // version [0] is optional (absent means v1); the fields after it are fixed
  const rest = fields[0]?.tag === 0xa0 ? fields.slice(1) : fields;
  if (rest.length < 6 || rest[5].tag !== 0x30) throw new Error("not an X.509 certificate");
  return { buf: certDer, fields: rest };
}

function toDer(cert: string | Uint8Array): Uint8Array {
  return typeof cert === "string" ? pemDecode(cert, "CERTIFICATE") : cert;
}

/** The DER SubjectPublicKeyInfo of a certificate (PEM text or DER bytes). */
export function subjectPublicKeyInfo(cert: string | Uint8Array): Bytes {
  const { buf, fields } = tbsFields(toDer(cert));
  return buf.slice(fields[5].start, fields[5].end);
}

/** `sha256:<hex>` of the certificate's SubjectPublicKeyInfo; pure, throws on a malformed certificate. */
export function certificateFingerprint(cert: string | Uint8Array): string {
  return "sha256:" + createHash("sha256").update(subjectPublicKeyInfo(cert)).digest("hex");
}

/** The subject's common name, when there is one. */
export function certificateCommonName(cert: string | Uint8Array): string | undefined {
  const { buf, fields } = tbsFields(toDer(cert));
  const cnOid = objectIdentifier(COMMON_NAME);
  for (const rdn of children(buf, fields[4])) {
    for (const attr of children(buf, rdn)) {
      const [type, value] = children(buf, attr);
      if (!type || !value) continue;
      const oid = buf.subarray(type.start, type.end);
      if (oid.length === cnOid.length && oid.every((b, i) => b === cnOid[i])) {
        return new TextDecoder().decode(buf.subarray(value.bodyStart, value.end));
      }
    }
  }
  return undefined;
}

/** Canonical form of a fingerprint given by a person or a config file; throws when malformed. */
export function parseFingerprint(text: string): string {
  const t = text.trim().toLowerCase();
  if (!/^sha256:[0-9a-f]{64}$/.test(t)) {
    throw new Error(`not a fingerprint: "${text}" (expected sha256: followed by 64 hex digits)`);
  }
  return t;
}

// ---- making identities ----

function checkName(name: string): void {
  // 64 is X.520's upper bound for a common name
  if (name.length === 0 || name.length > 64 || /\p{Cc}/u.test(name)) {
    throw new Error(`site name must be 1 to 64 printable characters (got ${JSON.stringify(name)})`);
  }
}

/** A fresh key pair and self-signed certificate, in memory. */
export async function createIdentity(name: string, now = new Date()): Promise<Identity> {
  checkName(name);
  const keys = await crypto.subtle.generateKey({ name: "Ed25519" }, true, [
    "sign",
    "verify",
  ]) as CryptoKeyPair;
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", keys.publicKey));
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", keys.privateKey));

  const serial = crypto.getRandomValues(new Uint8Array(16));
  serial[0] = (serial[0] & 0x7f) | 0x40; // positive, and a full 16 bytes
  const subject = sequence(set(sequence(objectIdentifier(COMMON_NAME), utf8String(name))));
  const algorithm = sequence(objectIdentifier(ED25519));
  const extension = (oid: string, critical: boolean, value: Uint8Array) =>
    sequence(objectIdentifier(oid), ...(critical ? [boolean(true)] : []), octetString(value));
  const tbs = sequence(
    explicit(0, smallInteger(2)), // v3
    unsignedInteger(serial),
    algorithm,
    subject, // issuer: self-signed
    // an hour of slack for clock skew; no expiry, as RFC 5280 4.1.2.5 allows: trust is the pin
    sequence(time(new Date(now.getTime() - 3_600_000)), time(new Date(Date.UTC(9999, 11, 31, 23, 59, 59)))),
    subject,
    spki,
    explicit(
      3,
      sequence(
        extension(BASIC_CONSTRAINTS, true, sequence()), // not a CA
        extension(KEY_USAGE, true, bitString(Uint8Array.of(0x80), 7)), // digitalSignature
        extension(
          EXT_KEY_USAGE,
          false,
          sequence(objectIdentifier(SERVER_AUTH), objectIdentifier(CLIENT_AUTH)),
        ),
      ),
    ),
  );
  const signature = new Uint8Array(await crypto.subtle.sign("Ed25519", keys.privateKey, tbs));
  const certDer = sequence(tbs, algorithm, bitString(signature));
  return makeIdentity(
    name,
    certificateFingerprint(certDer),
    pemEncode("CERTIFICATE", certDer),
    pemEncode("PRIVATE KEY", pkcs8),
  );
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Creates an identity and writes key.pem (0600) and cert.pem into dir (created 0700).
 * An existing identity is kept unless force: replacing it changes the fingerprint.
 */
export async function generateIdentity(
  dir: string,
  opts: { name: string; force?: boolean },
): Promise<Identity> {
  const paths = identityPaths(dir);
  if (!opts.force) {
    for (const p of [paths.key, paths.cert]) {
      if (await exists(p)) {
        throw new Error(
          `${p} already exists; not replacing the identity (--force replaces it and changes the fingerprint)`,
        );
      }
    }
  }
  const identity = await createIdentity(opts.name);
  if (!await exists(dir)) {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    await Deno.chmod(dir, 0o700); // whatever the umask
  }
  // replacing (or creating): the old files may not exist; createNew below refuses whatever is left
  for (const p of [paths.key, paths.cert]) await Deno.remove(p).catch(() => {});
  const enc = new TextEncoder();
  // createNew: never write the key through a file or symlink planted at that path
  await Deno.writeFile(paths.key, enc.encode(identity.keyPem), { mode: 0o600, createNew: true });
  await Deno.writeFile(paths.cert, enc.encode(identity.certPem), { mode: 0o644, createNew: true });
  return identity;
}

/** The identity's private key, for signing; not extractable. */
export function importSigningKey(identity: Identity): Promise<CryptoKey> {
  return crypto.subtle.importKey(
    "pkcs8",
    pemDecode(identity.keyPem, "PRIVATE KEY"),
    { name: "Ed25519" },
    false,
    [
      "sign",
    ],
  );
}

/** Fails unless the private key really belongs to the certificate. */
async function checkKeyMatches(keyDer: Bytes, spki: Bytes, keyPath: string): Promise<void> {
  let privateKey: CryptoKey, publicKey: CryptoKey;
  try {
    privateKey = await crypto.subtle.importKey("pkcs8", keyDer, { name: "Ed25519" }, false, ["sign"]);
  } catch {
    throw new Error(`${keyPath} is not an Ed25519 PKCS#8 key (make identities with continuum keygen)`);
  }
  try {
    publicKey = await crypto.subtle.importKey("spki", spki, { name: "Ed25519" }, false, ["verify"]);
  } catch {
    throw new Error(`${CERT_FILE} does not hold an Ed25519 public key`);
  }
  const probe = crypto.getRandomValues(new Uint8Array(32));
  const sig = await crypto.subtle.sign("Ed25519", privateKey, probe);
  if (!await crypto.subtle.verify("Ed25519", publicKey, sig, probe)) {
    throw new Error(`${keyPath} does not belong to the certificate next to it`);
  }
}

/**
 * Reads the identity in dir. Refuses a key file that group or others can access,
 * and a key that does not match the certificate.
 */
export async function loadIdentity(dir: string): Promise<Identity> {
  const paths = identityPaths(dir);
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(paths.key);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(
        `no identity in ${dir} (${KEY_FILE} missing); create one with: continuum keygen --dir ${dir}`,
      );
    }
    throw e;
  }
  if (info.mode !== null && (info.mode & 0o077) !== 0) {
    const mode = (info.mode & 0o777).toString(8).padStart(4, "0");
    throw new Error(
      `refusing to use ${paths.key}: mode ${mode} lets other users read or change the private key; run: chmod 600 ${paths.key}`,
    );
  }
  const keyPem = await Deno.readTextFile(paths.key);
  const certPem = await Deno.readTextFile(paths.cert);
  let keyDer: Bytes, certDer: Bytes, spki: Bytes;
  try {
    keyDer = pemDecode(keyPem, "PRIVATE KEY");
  } catch {
    throw new Error(`${paths.key} holds no PKCS#8 "PRIVATE KEY" block`);
  }
  try {
    certDer = pemDecode(certPem, "CERTIFICATE");
    spki = subjectPublicKeyInfo(certDer);
  } catch {
    throw new Error(`${paths.cert} holds no readable certificate`);
  }
  await checkKeyMatches(keyDer, spki, paths.key);
  return makeIdentity(
    certificateCommonName(certDer) ?? "",
    certificateFingerprint(certDer),
    pemEncode("CERTIFICATE", certDer),
    keyPem,
  );
}
