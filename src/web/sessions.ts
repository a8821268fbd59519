// Login sessions: a random 256-bit id in the `continuum_session` cookie (HttpOnly,
// SameSite=Strict, Path=/, Secure under TLS; set by access.ts); the database keeps only its SHA-256, the user, a
// per-session CSRF token, and the times. A session ends at logout, after `idleMs` without a
// request, or `maxAgeMs` after login, whichever comes first. Checks run from a cache; the last
// use is written back at most once a minute.
import { eq, lt } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { logger } from "../log.ts";
import { sessions } from "../db/schema.ts";
import { randomToken, sha256 } from "./auth.ts";

const log = logger("sessions");

export const SESSION_COOKIE = "continuum_session";

export interface Session {
  idHash: string;
  user: string;
  csrf: string;
  createdAt: number;
  lastSeen: number;
  expiresAt: number;
}

export interface SessionOptions {
  idleMs?: number;
  maxAgeMs?: number;
  clock?: () => number;
}

export class Sessions {
  private cache = new Map<string, Session & { written: number }>();
  readonly idleMs: number;
  readonly maxAgeMs: number;
  private readonly clock: () => number;

  constructor(private readonly db: Db, o: SessionOptions = {}) {
    this.idleMs = o.idleMs ?? 30 * 60_000;
    this.maxAgeMs = o.maxAgeMs ?? 12 * 3600_000;
    this.clock = o.clock ?? Date.now;
  }

  /** Starts a session for `user`; returns the cookie value (the only copy of the id). */
  async create(user: string): Promise<{ id: string; session: Session }> {
    const id = randomToken(32);
    const now = this.clock();
    const s: Session = {
      idHash: sha256(id),
      user,
      csrf: randomToken(32),
      createdAt: now,
      lastSeen: now,
      expiresAt: now + this.maxAgeMs,
    };
    await serialized(this.db, async () => {
      await this.db.delete(sessions).where(lt(sessions.expiresAt, now));
      await this.db.insert(sessions).values(s);
    });
    this.cache.set(s.idHash, { ...s, written: now });
    return { id, session: s };
  }

  /** The live session of a cookie value (its use is recorded), or undefined. */
  async get(id: string | undefined): Promise<Session | undefined> {
    if (!id || id.length > 100) return undefined;
    const idHash = sha256(id);
    let s = this.cache.get(idHash);
    if (!s) {
      const [row] = await this.db.select().from(sessions).where(eq(sessions.idHash, idHash));
      if (!row) return undefined;
      s = { ...row, written: row.lastSeen };
      this.cache.set(idHash, s);
    }
    const now = this.clock();
    if (now >= s.expiresAt || now - s.lastSeen >= this.idleMs) {
      await this.end(idHash);
      return undefined;
    }
    s.lastSeen = now;
    if (now - s.written > 60_000) {
      s.written = now;
      const h = idHash;
      // a missed write only shortens what a restart remembers of the session's activity
      serialized(this.db, () => this.db.update(sessions).set({ lastSeen: now }).where(eq(sessions.idHash, h)))
        .catch((e) => log.warn("cannot record a session's last activity", { error: e }));
    }
    return s;
  }

  /** Whether a session is still live without counting as a use (for open event streams). */
  alive(idHash: string): boolean {
    const s = this.cache.get(idHash);
    const now = this.clock();
    return s !== undefined && now < s.expiresAt;
  }

  async end(idHash: string): Promise<void> {
    this.cache.delete(idHash);
    await serialized(this.db, () => this.db.delete(sessions).where(eq(sessions.idHash, idHash)));
  }

  /** Forgets cached sessions of a user (after their password or role changed, or they were deleted). */
  forgetUser(user: string, keep?: string): void {
    for (const [h, s] of this.cache) if (s.user === user && h !== keep) this.cache.delete(h);
  }
}
