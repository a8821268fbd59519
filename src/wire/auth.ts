// Challenge-response authentication of an agent to its local gateway, both ways:
// each side proves it holds the per-agent secret by a MAC over fresh nonces; the
// secret itself never crosses the wire and is never logged.
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

export const NONCE_BYTES = 32;

export function nonce(): Uint8Array {
  return new Uint8Array(randomBytes(NONCE_BYTES));
}

function mac(secret: Uint8Array, role: string, agent: string, a: Uint8Array, b: Uint8Array): Uint8Array {
  const h = createHmac("sha256", secret);
  h.update(`continuum-link-v1/${role}/${agent}/`);
  h.update(a);
  h.update(b);
  return new Uint8Array(h.digest());
}

/** The agent's proof: over the gateway's challenge, then its own nonce. */
export function agentProof(
  secret: Uint8Array,
  agent: string,
  gwNonce: Uint8Array,
  agentNonce: Uint8Array,
): Uint8Array {
  return mac(secret, "agent", agent, gwNonce, agentNonce);
}

/** The gateway's proof: the nonces in the other order, another role label. */
export function gatewayProof(
  secret: Uint8Array,
  agent: string,
  gwNonce: Uint8Array,
  agentNonce: Uint8Array,
): Uint8Array {
  return mac(secret, "gateway", agent, agentNonce, gwNonce);
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export const b64 = {
  encode: (b: Uint8Array): string => btoa(String.fromCharCode(...b)),
  decode: (s: unknown): Uint8Array => {
    if (typeof s !== "string" || s.length > 1024) return new Uint8Array(0);
    try {
      return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
    } catch {
      return new Uint8Array(0);
    }
  },
};

/** Reads a secret file: its bytes, trimmed of a trailing newline; refuses short or world-readable ones. */
export function readSecretFile(path: string): Uint8Array {
  let st: Deno.FileInfo;
  let raw: Uint8Array;
  try {
    st = Deno.statSync(path);
    raw = Deno.readFileSync(path);
  } catch (e) {
    throw new Error(`cannot read secret file ${path}: ${(e as Error).message}`);
  }
  if (st.mode !== null && (st.mode & 0o077) !== 0) {
    throw new Error(`secret file ${path} is readable by group or others (chmod 600 it)`);
  }
  let end = raw.length;
  while (end > 0 && (raw[end - 1] === 10 || raw[end - 1] === 13)) end--;
  const secret = raw.subarray(0, end);
  if (secret.length < 16) throw new Error(`secret file ${path} holds fewer than 16 bytes`);
  return secret;
}
