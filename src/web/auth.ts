// Who may use the web UI and the API: users (scrypt-hashed passwords, role admin or viewer),
// API tokens for automation (stored as SHA-256; the DATA-DIR/api-token file is an admin
// token), the one-time setup token of a gateway that has no user yet, and the limit on failed
// logins. Nothing here ever logs a password or a token.
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { eq } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { logger } from "../log.ts";
import { apiTokens, sessions, users } from "../db/schema.ts";
import { hashPassword, passwordProblem, verifyPassword } from "./passwords.ts";
import { tokenMatches } from "./token.ts";

const log = logger("auth");

export type Role = "admin" | "viewer";

/** Who a request acts for. */
export interface Principal {
  kind: "session" | "token";
  /** User name, or token name (`api-token` for the file's). */
  name: string;
  role: Role;
  /** Session requests: the session id's hash and its CSRF token. */
  session?: { idHash: string; csrf: string };
}

export class AuthError extends Error {
  constructor(
    message: string,
    readonly status: 400 | 401 | 403 | 404 | 409 | 410 | 429,
    readonly retryAfterS?: number,
  ) {
    super(message);
    this.name = "AuthError";
  }
}

export function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

export function randomToken(bytes = 32): string {
  return randomBytes(bytes).toString("base64url");
}

export function sameText(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a), y = new TextEncoder().encode(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

// ------------------------------------------------------------------------------ users

export interface User {
  name: string;
  role: Role;
  createdAt: number;
  updatedAt: number;
}

export class Users {
  /** name → row; the table is small and only this process writes it. */
  private cache: Map<string, typeof users.$inferSelect> | undefined;

  constructor(private readonly db: Db) {}

  private async rows(): Promise<Map<string, typeof users.$inferSelect>> {
    if (!this.cache) this.cache = new Map((await this.db.select().from(users)).map((r) => [r.name, r]));
    return this.cache;
  }

  private forget(): void {
    this.cache = undefined;
  }

  async list(): Promise<User[]> {
    return [...(await this.rows()).values()].sort((a, b) => a.name.localeCompare(b.name)).map((r) => ({
      name: r.name,
      role: r.role as Role,
      createdAt: r.createdAt,
      updatedAt: r.updatedAt,
    }));
  }

  async count(): Promise<number> {
    return (await this.rows()).size;
  }

  async get(name: string): Promise<User | undefined> {
    const r = (await this.rows()).get(name);
    return r && { name: r.name, role: r.role as Role, createdAt: r.createdAt, updatedAt: r.updatedAt };
  }

  async create(name: string, password: string, role: Role): Promise<User> {
    const problem = passwordProblem(password);
    if (problem) throw new AuthError(`password: ${problem}`, 400);
    const hash = await hashPassword(password);
    return await serialized(this.db, async () => {
      this.forget();
      if ((await this.rows()).has(name)) throw new AuthError(`user "${name}" exists already`, 409);
      const now = Date.now();
      await this.db.insert(users).values({ name, role, passwordHash: hash, createdAt: now, updatedAt: now });
      this.forget();
      return (await this.get(name))!;
    });
  }

  /** Checks a password; undefined when the name or the password is wrong. */
  async verify(name: string, password: string): Promise<User | undefined> {
    const row = (await this.rows()).get(name);
    const { ok, rehash } = await verifyPassword(password, row?.passwordHash);
    if (!ok || !row) return undefined;
    if (rehash) {
      const hash = await hashPassword(password);
      await serialized(
        this.db,
        () => this.db.update(users).set({ passwordHash: hash }).where(eq(users.name, name)),
      );
      this.forget();
    }
    return { name: row.name, role: row.role as Role, createdAt: row.createdAt, updatedAt: row.updatedAt };
  }

  /** Changes role and/or password; a new password ends the user's other sessions. */
  async update(
    name: string,
    change: { role?: Role; password?: string },
    keepSession?: string,
  ): Promise<User> {
    if (change.password !== undefined) {
      const problem = passwordProblem(change.password);
      if (problem) throw new AuthError(`password: ${problem}`, 400);
    }
    const hash = change.password !== undefined ? await hashPassword(change.password) : undefined;
    return await serialized(this.db, async () => {
      this.forget();
      const all = await this.rows();
      const row = all.get(name);
      if (!row) throw new AuthError(`no user "${name}"`, 404);
      if (change.role === "viewer" && row.role === "admin" && this.admins(all) === 1) {
        throw new AuthError(`user "${name}" is the last admin: make another admin first`, 409);
      }
      await this.db.update(users).set({
        ...(change.role ? { role: change.role } : {}),
        ...(hash ? { passwordHash: hash } : {}),
        updatedAt: Date.now(),
      }).where(eq(users.name, name));
      if (hash || change.role) {
        // a new password or a new role: the user logs in again everywhere else
        const theirs = await this.db.select().from(sessions).where(eq(sessions.user, name));
        for (const s of theirs) {
          if (s.idHash !== keepSession) await this.db.delete(sessions).where(eq(sessions.idHash, s.idHash));
        }
      }
      this.forget();
      return (await this.get(name))!;
    });
  }

  private admins(all: Map<string, typeof users.$inferSelect>): number {
    return [...all.values()].filter((r) => r.role === "admin").length;
  }

  async remove(name: string): Promise<void> {
    await serialized(this.db, async () => {
      this.forget();
      const all = await this.rows();
      const row = all.get(name);
      if (!row) throw new AuthError(`no user "${name}"`, 404);
      if (row.role === "admin" && this.admins(all) === 1) {
        throw new AuthError(`user "${name}" is the last admin and cannot be deleted`, 409);
      }
      await this.db.delete(sessions).where(eq(sessions.user, name));
      await this.db.delete(users).where(eq(users.name, name));
      this.forget();
    });
  }
}

// ------------------------------------------------------------------------------ API tokens

export interface TokenInfo {
  name: string;
  role: Role;
  createdAt: number;
  lastUsed: number | null;
}

export class ApiTokens {
  private lastUsedWritten = new Map<string, number>();
  /** Tokens deleted while this process runs: their open event streams end. */
  private removed = new Set<string>();

  /** `fileToken`: the DATA-DIR/api-token file's token, an admin token. */
  constructor(private readonly db: Db, private readonly fileToken?: string) {}

  /** The principal a bearer header stands for, or undefined. */
  async check(header: string): Promise<Principal | undefined> {
    if (this.fileToken && tokenMatches(header, this.fileToken)) {
      return { kind: "token", name: "api-token", role: "admin" };
    }
    const given = header.slice(7).trim();
    if (!given) return undefined;
    const [row] = await this.db.select().from(apiTokens).where(eq(apiTokens.tokenHash, sha256(given)));
    if (!row) return undefined;
    const now = Date.now();
    // the last use is written at most once a minute per token
    if (now - (this.lastUsedWritten.get(row.name) ?? 0) > 60_000) {
      this.lastUsedWritten.set(row.name, now);
      serialized(
        this.db,
        () => this.db.update(apiTokens).set({ lastUsed: now }).where(eq(apiTokens.name, row.name)),
      )
        .catch((e) => log.warn("cannot record an API token's last use", { token: row.name, error: e }));
    }
    return { kind: "token", name: row.name, role: row.role as Role };
  }

  async list(): Promise<TokenInfo[]> {
    return (await this.db.select().from(apiTokens).orderBy(apiTokens.name)).map((r) => ({
      name: r.name,
      role: r.role as Role,
      createdAt: r.createdAt,
      lastUsed: r.lastUsed,
    }));
  }

  /** Creates a token; its value is returned this once and never stored. */
  async create(name: string, role: Role): Promise<TokenInfo & { token: string }> {
    if (name === "api-token") throw new AuthError('name: "api-token" is the token file\'s name', 400);
    const token = `ctm_${randomToken(32)}`;
    return await serialized(this.db, async () => {
      if ((await this.db.select().from(apiTokens).where(eq(apiTokens.name, name))).length) {
        throw new AuthError(`token "${name}" exists already`, 409);
      }
      const now = Date.now();
      await this.db.insert(apiTokens).values({ name, tokenHash: sha256(token), role, createdAt: now });
      this.removed.delete(name);
      return { name, role, createdAt: now, lastUsed: null, token };
    });
  }

  async remove(name: string): Promise<void> {
    await serialized(this.db, async () => {
      if (!(await this.db.select().from(apiTokens).where(eq(apiTokens.name, name))).length) {
        throw new AuthError(`no token "${name}"`, 404);
      }
      await this.db.delete(apiTokens).where(eq(apiTokens.name, name));
      this.removed.add(name);
    });
  }

  /** Whether a token checked earlier still exists (the file's token always does). */
  live(name: string): boolean {
    return !this.removed.has(name);
  }
}

// ------------------------------------------------------------------------------ setup

/**
 * The one-time setup token of a gateway without users: random, valid for `ttlMs`, used once.
 * Only its hash is kept; the link carrying it is printed once on stdout.
 */
export class SetupToken {
  private hash: string | undefined;
  private expires = 0;

  constructor(private readonly ttlMs = 30 * 60_000) {}

  create(): string {
    const token = randomToken(32);
    this.hash = sha256(token);
    this.expires = performance.now() + this.ttlMs;
    return token;
  }

  /** Uses the token up; throws when it is wrong, used or expired. */
  consume(token: string): void {
    if (!this.hash) throw new AuthError("there is no setup pending (it was done, or the link was used)", 410);
    if (!sameText(sha256(token), this.hash)) throw new AuthError("token: the setup token is wrong", 403);
    if (performance.now() >= this.expires) {
      this.hash = undefined;
      throw new AuthError("the setup link has expired: restart the gateway to get a new one", 410);
    }
    this.hash = undefined;
  }

  cancel(): void {
    this.hash = undefined;
  }
}

/** Reads the initial admin password from a file only its owner can read (like agents' secret files). */
export function readPasswordFile(path: string): string {
  let st: Deno.FileInfo, text: string;
  try {
    st = Deno.statSync(path);
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new Error(`cannot read the admin password file ${path}: ${(e as Error).message}`);
  }
  if (st.mode !== null && (st.mode & 0o077) !== 0) {
    throw new Error(`admin password file ${path} is readable by group or others (chmod 600 it)`);
  }
  const password = text.replace(/[\r\n]+$/, "");
  const problem = passwordProblem(password);
  if (problem) throw new Error(`admin password file ${path}: the password ${problem}`);
  return password;
}

// ------------------------------------------------------------------------------ login limit

/**
 * Failed logins per key (a client address, a user name) in a sliding window: after `max`
 * failures within `windowMs` the key is refused until the oldest one leaves the window.
 */
export class FailureLimiter {
  private failures = new Map<string, number[]>();

  constructor(
    readonly max = 5,
    readonly windowMs = 60_000,
    private readonly clock: () => number = () => performance.now(),
  ) {}

  private recent(key: string): number[] {
    const now = this.clock();
    const list = (this.failures.get(key) ?? []).filter((t) => now - t < this.windowMs);
    if (list.length) this.failures.set(key, list);
    else this.failures.delete(key);
    return list;
  }

  /** Seconds until `key` may try again; 0 when it may now. */
  retryAfter(key: string): number {
    const list = this.recent(key);
    if (list.length < this.max) return 0;
    return Math.max(1, Math.ceil((list[list.length - this.max] + this.windowMs - this.clock()) / 1000));
  }

  fail(key: string): void {
    const list = this.recent(key);
    list.push(this.clock());
    this.failures.set(key, list.slice(-this.max * 2));
    if (this.failures.size > 10_000) {
      // bounded memory: forget the keys whose failures are oldest
      const first = this.failures.keys().next().value;
      if (first !== undefined) this.failures.delete(first);
    }
  }

  reset(key: string): void {
    this.failures.delete(key);
  }
}
