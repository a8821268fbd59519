// Access control of the API: who a request is (session cookie or bearer token), CSRF and
// origin checks on every change made with a cookie, roles on every change, and the routes of
// login, logout, session, first-start setup, users and API tokens.
//
// - Bearer requests (`Authorization: Bearer …`: the DATA-DIR/api-token file, or a token made
//   with POST /api/tokens) carry no cookie, so a browser cannot be tricked into sending them;
//   they skip the CSRF check.
// - Cookie requests that change something (POST, PUT, PATCH, DELETE) must carry the session's
//   CSRF token in X-CSRF-Token, and, when the browser says where they come from (Origin,
//   Sec-Fetch-Site), come from this origin.
// - A viewer may only read, log out and change their own password.
import type { Context, Hono, MiddlewareHandler } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import { z } from "zod";
import { nameSchema } from "../tasks/model.ts";
import type { Audit } from "../audit/audit.ts";
import { logger } from "../log.ts";
import {
  type ApiTokens,
  AuthError,
  type FailureLimiter,
  type Principal,
  sameText,
  type SetupToken,
  type Users,
} from "./auth.ts";
import { SESSION_COOKIE, type Sessions } from "./sessions.ts";
import { HttpError, readBody } from "./http.ts";
import { passwordProblem } from "./passwords.ts";

declare module "hono" {
  interface ContextVariableMap {
    principal: Principal;
  }
}

const log = logger("http.access");

const MUTATING = new Set(["POST", "PUT", "PATCH", "DELETE"]);
/** Open without credentials. */
const PUBLIC = new Set(["POST /api/login", "POST /api/setup"]);
/** Changes a viewer may make. */
const SELF_SERVICE = new Set(["POST /api/logout", "POST /api/session/password"]);

export interface AccessDeps {
  users: Users;
  sessions: Sessions;
  tokens: ApiTokens;
  setup: SetupToken;
  limiter: FailureLimiter;
  audit?: Audit;
  /** Cookies get Secure (HTTPS). */
  secure: boolean;
  counters: { loginFailures: number };
}

/** The client's address (from Deno.serve's connection info). */
export function clientAddress(c: Context): string {
  const env = c.env as { remoteAddr?: { hostname?: string } } | undefined;
  return env?.remoteAddr?.hostname ?? "unknown";
}

/** Authenticates /api/* and /metrics, checks CSRF and origin on changes, and roles. */
export function accessControl(d: AccessDeps): MiddlewareHandler {
  return async (c, next) => {
    const method = c.req.method;
    const key = `${method} ${c.req.path}`;
    if (PUBLIC.has(key)) return await next();
    let principal: Principal | undefined;
    const auth = c.req.header("authorization");
    if (auth !== undefined) {
      if (auth.startsWith("Bearer ")) principal = await d.tokens.check(auth);
      if (!principal) {
        return c.json({ error: "authentication failed: the bearer token is not valid" }, 401, {
          "www-authenticate": 'Bearer realm="continuum"',
        });
      }
    } else {
      const s = await d.sessions.get(getCookie(c, SESSION_COOKIE));
      const user = s && await d.users.get(s.user);
      if (s && user) {
        principal = {
          kind: "session",
          name: user.name,
          role: user.role,
          session: { idHash: s.idHash, csrf: s.csrf },
        };
      }
    }
    if (!principal) {
      return c.json(
        { error: "login required: log in (POST /api/login) or send Authorization: Bearer <api token>" },
        401,
      );
    }
    if (MUTATING.has(method)) {
      if (principal.session) {
        // not hono/csrf: it checks only form-encoded bodies and has no per-session token
        const site = c.req.header("sec-fetch-site");
        const origin = c.req.header("origin");
        if (
          (site && site !== "same-origin" && site !== "none") ||
          (origin && origin !== new URL(c.req.url).origin)
        ) {
          return c.json({ error: "cross-site request refused (its Origin is not this server)" }, 403);
        }
        const csrf = c.req.header("x-csrf-token");
        if (!csrf) {
          return c.json(
            { error: "CSRF token missing: send the X-CSRF-Token header (from GET /api/session)" },
            403,
          );
        }
        if (!sameText(csrf, principal.session.csrf)) {
          return c.json({
            error: "CSRF token wrong: send this session's X-CSRF-Token (from GET /api/session)",
          }, 403);
        }
      }
      if (principal.role !== "admin" && !SELF_SERVICE.has(key)) {
        return c.json({
          error: `${principal.name} is a viewer (read-only): this change needs the admin role`,
        }, 403);
      }
    }
    c.set("principal", principal);
    await next();
  };
}

function adminOnly(c: Context): void {
  if (c.get("principal")?.role !== "admin") throw new HttpError(403, "this needs the admin role");
}

const loginSchema = z.object({
  name: z.string({ error: "is required" }).min(1, "is required").max(64, "is too long"),
  password: z.string({ error: "is required" }).min(1, "is required").max(1024, "is too long"),
}).strict();

const passwordField = z.string({ error: "is required" });
const role = z.enum(["admin", "viewer"], { error: 'must be "admin" or "viewer"' });

const setupSchema = z.object({
  token: z.string({ error: "is required" }).min(1, "is required").max(200, "is too long"),
  name: nameSchema.default("admin"),
  password: passwordField,
}).strict();

const newUserSchema = z.object({ name: nameSchema, password: passwordField, role }).strict();
const changeUserSchema = z.object({ role: role.optional(), password: passwordField.optional() }).strict()
  .refine((u) => u.role !== undefined || u.password !== undefined, "give role and/or password");
const ownPasswordSchema = z.object({ current: passwordField, password: passwordField }).strict();
const newTokenSchema = z.object({ name: nameSchema, role }).strict();

function param(c: Context, what: string): string {
  const r = nameSchema.safeParse(c.req.param("name"));
  if (!r.success) throw new HttpError(400, `${what} name in the URL: ${r.error.issues[0].message}`);
  return r.data;
}

/** The session cookie: never read by scripts, never sent cross-site, only over TLS where TLS is on. */
function cookieOptions(secure: boolean) {
  return { path: "/", httpOnly: true, sameSite: "Strict", secure } as const;
}

export function accessRoutes(app: Hono, d: AccessDeps): void {
  const startSession = async (c: Context, user: string, role: string) => {
    const { id, session } = await d.sessions.create(user);
    setCookie(c, SESSION_COOKIE, id, {
      ...cookieOptions(d.secure),
      maxAge: Math.floor(d.sessions.maxAgeMs / 1000),
    });
    return { user, role, csrf: session.csrf, expiresAt: session.expiresAt, idleMs: d.sessions.idleMs };
  };

  app.post("/api/login", async (c) => {
    const b = await readBody(c, loginSchema);
    const addrKey = `addr:${clientAddress(c)}`, userKey = `user:${b.name}`;
    const wait = Math.max(d.limiter.retryAfter(addrKey), d.limiter.retryAfter(userKey));
    if (wait > 0) {
      throw new AuthError(`too many failed logins: try again in ${wait} s`, 429, wait);
    }
    const user = await d.users.verify(b.name, b.password);
    if (!user) {
      d.limiter.fail(addrKey);
      d.limiter.fail(userKey);
      d.counters.loginFailures++;
      log.info("failed login", { user: b.name.slice(0, 64), from: clientAddress(c) });
      throw new AuthError("wrong user name or password", 401);
    }
    d.limiter.reset(userKey);
    const body = await startSession(c, user.name, user.role);
    await d.audit?.record({
      subject: `user:${user.name}`,
      kind: "access",
      cause: `${user.name} logged in from ${clientAddress(c)}`,
    });
    return c.json(body);
  });

  app.post("/api/logout", async (c) => {
    const p = c.get("principal");
    if (p.session) await d.sessions.end(p.session.idHash);
    deleteCookie(c, SESSION_COOKIE, cookieOptions(d.secure));
    return c.json({ ok: true });
  });

  app.get("/api/session", (c) => {
    const p = c.get("principal");
    return c.json({
      user: p.name,
      role: p.role,
      kind: p.kind,
      ...(p.session ? { csrf: p.session.csrf, idleMs: d.sessions.idleMs } : {}),
    });
  });

  app.post("/api/session/password", async (c) => {
    const p = c.get("principal");
    if (!p.session) throw new HttpError(400, "only a logged-in user can change their password (not a token)");
    const b = await readBody(c, ownPasswordSchema);
    const wait = d.limiter.retryAfter(`user:${p.name}`);
    if (wait > 0) throw new AuthError(`too many wrong passwords: try again in ${wait} s`, 429, wait);
    if (!(await d.users.verify(p.name, b.current))) {
      d.limiter.fail(`user:${p.name}`);
      throw new HttpError(403, "current: the current password is wrong", [{
        path: "current",
        message: "is wrong",
      }]);
    }
    await d.users.update(p.name, { password: b.password }, p.session.idHash);
    d.sessions.forgetUser(p.name, p.session.idHash);
    await d.audit?.record({
      subject: `user:${p.name}`,
      kind: "access",
      cause: `${p.name} changed their password`,
    });
    return c.json({ ok: true });
  });

  app.post("/api/setup", async (c) => {
    const b = await readBody(c, setupSchema);
    const addrKey = `addr:${clientAddress(c)}`;
    const wait = d.limiter.retryAfter(addrKey);
    if (wait > 0) throw new AuthError(`too many failed attempts: try again in ${wait} s`, 429, wait);
    if ((await d.users.count()) > 0) {
      d.setup.cancel();
      throw new AuthError("setup is done already: log in instead", 409);
    }
    // a password the policy refuses must not burn the link: checked first
    const problem = passwordProblem(b.password);
    if (problem) throw new HttpError(400, `password: ${problem}`, [{ path: "password", message: problem }]);
    try {
      d.setup.consume(b.token);
    } catch (e) {
      d.limiter.fail(addrKey);
      throw e;
    }
    const user = await d.users.create(b.name, b.password, "admin");
    await d.audit?.record({
      subject: `user:${user.name}`,
      kind: "access",
      cause: `first admin ${user.name} created by setup`,
    });
    return c.json(await startSession(c, user.name, user.role), 201);
  });

  // ---------------------------------------------------------------- users (admins)
  app.get("/api/users", async (c) => {
    adminOnly(c);
    return c.json(await d.users.list());
  });
  app.post("/api/users", async (c) => {
    const b = await readBody(c, newUserSchema);
    const u = await d.users.create(b.name, b.password, b.role);
    await d.audit?.record({
      subject: `user:${u.name}`,
      kind: "access",
      cause: `user ${u.name} (${u.role}) created by ${c.get("principal").name}`,
    });
    return c.json(u, 201);
  });
  app.put("/api/users/:name", async (c) => {
    const name = param(c, "user");
    const b = await readBody(c, changeUserSchema);
    const keep = c.get("principal").session?.idHash;
    const u = await d.users.update(name, b, keep);
    d.sessions.forgetUser(name, keep);
    await d.audit?.record({
      subject: `user:${name}`,
      kind: "access",
      cause: `user ${name} changed (${
        [b.role && `role ${b.role}`, b.password && "password"].filter(Boolean).join(", ")
      }) by ${c.get("principal").name}`,
    });
    return c.json(u);
  });
  app.delete("/api/users/:name", async (c) => {
    const name = param(c, "user");
    await d.users.remove(name);
    d.sessions.forgetUser(name);
    await d.audit?.record({
      subject: `user:${name}`,
      kind: "access",
      cause: `user ${name} deleted by ${c.get("principal").name}`,
    });
    return c.json({ ok: true });
  });

  // ---------------------------------------------------------------- API tokens (admins)
  app.get("/api/tokens", async (c) => {
    adminOnly(c);
    return c.json(await d.tokens.list());
  });
  app.post("/api/tokens", async (c) => {
    const b = await readBody(c, newTokenSchema);
    const t = await d.tokens.create(b.name, b.role);
    await d.audit?.record({
      subject: `token:${b.name}`,
      kind: "access",
      cause: `API token ${b.name} (${b.role}) created by ${c.get("principal").name}`,
    });
    return c.json(t, 201);
  });
  app.delete("/api/tokens/:name", async (c) => {
    const name = param(c, "token");
    await d.tokens.remove(name);
    await d.audit?.record({
      subject: `token:${name}`,
      kind: "access",
      cause: `API token ${name} deleted by ${c.get("principal").name}`,
    });
    return c.json({ ok: true });
  });
}
