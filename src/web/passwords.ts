// Password hashing: scrypt with a random 16-byte salt per password and its parameters stored
// with the hash (`scrypt$N$r$p$SALT$HASH`, base64), so they can be raised later: a hash with
// weaker parameters than the current ones is replaced at the next successful login. At most
// two hashes are computed at once (each takes 32 MiB and ~0.1 s), so a burst of logins cannot
// exhaust memory; the login rate limit keeps the queue short.
import { Buffer } from "node:buffer";
import { randomBytes, scrypt, timingSafeEqual } from "node:crypto";

export const SCRYPT = { N: 2 ** 15, r: 8, p: 1, saltBytes: 16, keyBytes: 32 } as const;
export const MIN_PASSWORD = 10;
export const MAX_PASSWORD = 1024;

const MAXMEM = 256 * 1024 * 1024;
let running = 0;
const waiting: (() => void)[] = [];

async function limited<T>(fn: () => Promise<T>): Promise<T> {
  if (running >= 2) await new Promise<void>((r) => waiting.push(r));
  running++;
  try {
    return await fn();
  } finally {
    running--;
    waiting.shift()?.();
  }
}

function derive(
  password: string,
  salt: Uint8Array,
  N: number,
  r: number,
  p: number,
  len: number,
): Promise<Buffer> {
  return limited(() =>
    new Promise((resolve, reject) =>
      scrypt(
        password.normalize("NFC"),
        salt,
        len,
        { N, r, p, maxmem: MAXMEM },
        (e, k) => e ? reject(e) : resolve(k),
      )
    )
  );
}

/** A new hash of `password` with the current parameters and a fresh salt. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(SCRYPT.saltBytes);
  const key = await derive(password, salt, SCRYPT.N, SCRYPT.r, SCRYPT.p, SCRYPT.keyBytes);
  return ["scrypt", SCRYPT.N, SCRYPT.r, SCRYPT.p, salt.toString("base64"), key.toString("base64")].join("$");
}

interface Parsed {
  N: number;
  r: number;
  p: number;
  salt: Buffer;
  key: Buffer;
}

function parse(encoded: string): Parsed | undefined {
  const f = encoded.split("$");
  if (f.length !== 6 || f[0] !== "scrypt") return undefined;
  const [N, r, p] = f.slice(1, 4).map(Number);
  const ok = (x: number, max: number) => Number.isInteger(x) && x > 0 && x <= max;
  if (!ok(N, 2 ** 20) || (N & (N - 1)) !== 0 || !ok(r, 32) || !ok(p, 16)) return undefined;
  const salt = Buffer.from(f[4], "base64"), key = Buffer.from(f[5], "base64");
  if (salt.length < 8 || key.length < 16) return undefined;
  return { N, r, p, salt, key };
}

// compared against when the user does not exist, so that case takes as long as a wrong password
let dummy: Promise<string> | undefined;

/** Whether `password` matches `encoded` (undefined: no such user; the same work is done). */
export async function verifyPassword(
  password: string,
  encoded: string | undefined,
): Promise<{ ok: boolean; rehash: boolean }> {
  const target = encoded ?? await (dummy ??= hashPassword(randomBytes(16).toString("hex")));
  const h = parse(target);
  if (!h) return { ok: false, rehash: false };
  const key = await derive(password, h.salt, h.N, h.r, h.p, h.key.length);
  const ok = encoded !== undefined && timingSafeEqual(key, h.key);
  const weaker = h.N < SCRYPT.N || h.r < SCRYPT.r || h.p < SCRYPT.p || h.key.length < SCRYPT.keyBytes;
  return { ok, rehash: ok && weaker };
}

/** Why a new password is not acceptable, or undefined. */
export function passwordProblem(password: string): string | undefined {
  if (password.length < MIN_PASSWORD) return `must be at least ${MIN_PASSWORD} characters`;
  if (password.length > MAX_PASSWORD) return `must be at most ${MAX_PASSWORD} characters`;
  if (password.trim() !== password) return "must not begin or end with white space";
  return undefined;
}
