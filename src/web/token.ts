// The gateway's API token for automation: created at first start in the data
// directory (owner-only); requests present it as `Authorization: Bearer …`.
import { randomBytes, timingSafeEqual } from "node:crypto";

export function loadOrCreateToken(path: string): string {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch {
    const token = randomBytes(32).toString("hex");
    Deno.writeTextFileSync(path, token + "\n", { mode: 0o600, createNew: true });
    return token;
  }
}

export function tokenMatches(header: string | undefined | null, token: string): boolean {
  if (!header?.startsWith("Bearer ")) return false;
  const given = new TextEncoder().encode(header.slice(7).trim());
  const want = new TextEncoder().encode(token);
  return given.length === want.length && timingSafeEqual(given, want);
}
