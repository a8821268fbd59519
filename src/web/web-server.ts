// The local gateway's web server (hono): the web UI, the JSON API under /api, the event
// stream, and /metrics — all behind login (a session cookie) or an API token, except the
// UI's own files and POST /api/login and /api/setup. HTTPS when given a certificate.
//
// First start (no user yet): with --admin-password-file the user "admin" is created from it;
// otherwise a one-time setup link (random token, 30 minutes, single use) is printed once on
// stdout as `setup-url=…/setup#TOKEN` — the token sits in the fragment, so it never reaches a
// server log or a Referer header — and never goes through the JSON logger.
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { secureHeaders } from "hono/secure-headers";
import { hostname as osHostname } from "node:os";
import type { Db } from "../db/db.ts";
import { Audit } from "../audit/audit.ts";
import { logger } from "../log.ts";
import type { Address } from "../link/address.ts";
import { TaskStore } from "../tasks/store.ts";
import type { TaskActions } from "../tasks/actions.ts";
import { followTasks, type RecoveryRow } from "../tasks/gateway-actions.ts";
import { ApiTokens, FailureLimiter, readPasswordFile, SetupToken, Users } from "./auth.ts";
import { type SessionOptions, Sessions } from "./sessions.ts";
import { accessControl, type AccessDeps, accessRoutes } from "./access.ts";
import { EventBus, EventStreams, parseFilter, type RecoveryView, StatusCollector } from "./events.ts";
import { renderMetrics } from "./metrics.ts";
import type { GatewayStatus } from "./gateway-status.ts";
import { taskRoutes } from "./task-routes.ts";
import type { Discovery } from "../tasks/discovery.ts";
import { discoveryRoutes } from "./discovery-routes.ts";
import { errorResponse, HttpError, MAX_BODY, tooLarge } from "./http.ts";
import { INDEX_HTML, NOT_BUILT_HTML, readBundle } from "./ui-static.ts";
import { serveHttp, type TlsFiles } from "./status-server.ts";

const log = logger("http");

export interface WebServerOptions {
  listen: Address & { transport: "tcp" };
  /** Certificate and key files (PEM): serve HTTPS. */
  tls?: TlsFiles;
  db: Db;
  /** The DATA-DIR/api-token file's token: an admin token. */
  fileToken?: string;
  /** Creates the user "admin" with this file's password when there is no user yet. */
  adminPasswordFile?: string;
  status: () => GatewayStatus;
  /** More routes (registered behind the access control). */
  routes?: (app: Hono) => void;
  actions: TaskActions;
  store?: TaskStore;
  /** Move tasks through the state machine as the status shows their copies (see gateway-actions.ts). */
  followTasks?: boolean;
  /** What the gateway finds by itself: /api/discovery, and the copies a new task adopts. */
  discovery?: Pick<Discovery, "status" | "propose" | "adoptable">;
  audit?: Audit;
  /** Recoveries and their progress (events, metrics, tasks that recover). */
  recoveries?: () => Promise<(RecoveryView & RecoveryRow)[]>;
  /** Where the setup link goes (default: a line on stdout). */
  printSetup?: (line: string) => void;
  sessions?: SessionOptions;
  loginLimit?: { max: number; windowMs: number };
  setupTtlMs?: number;
}

export interface WebServer {
  port: number;
  /** http(s)://HOST:PORT */
  url: string;
  bus: EventBus;
  store: TaskStore;
  collector: StatusCollector;
  close(): Promise<void>;
}

/** What a browser may do with the UI's pages: only this origin's scripts, styles and connections. */
function securityHeaders(tls: boolean) {
  return secureHeaders({
    contentSecurityPolicy: {
      defaultSrc: ["'none'"],
      scriptSrc: ["'self'"],
      styleSrc: ["'self'"],
      imgSrc: ["'self'", "data:"],
      connectSrc: ["'self'"],
      baseUri: ["'none'"],
      formAction: ["'self'"],
      frameAncestors: ["'none'"],
    },
    xFrameOptions: "DENY",
    referrerPolicy: "no-referrer",
    crossOriginOpenerPolicy: "same-origin",
    crossOriginResourcePolicy: "same-origin",
    permissionsPolicy: { camera: [], microphone: [], geolocation: [] },
    strictTransportSecurity: tls ? "max-age=31536000" : false,
  });
}

function urlHost(hostname: string): string {
  if (hostname === "0.0.0.0" || hostname === "::" || hostname === "") return osHostname();
  return hostname.includes(":") ? `[${hostname}]` : hostname;
}

export async function startWebServer(o: WebServerOptions): Promise<WebServer> {
  const audit = o.audit ?? new Audit(o.db);
  const users = new Users(o.db);
  const setup = new SetupToken(o.setupTtlMs);
  let setupToken: string | undefined;
  if ((await users.count()) === 0) {
    if (o.adminPasswordFile) {
      await users.create("admin", readPasswordFile(o.adminPasswordFile), "admin");
      log.info("created the first admin user from the password file", { user: "admin" });
      await audit.record({
        subject: "user:admin",
        kind: "access",
        cause: "first admin created from --admin-password-file",
      });
    } else setupToken = setup.create();
  } else if (o.adminPasswordFile) {
    log.info("users exist already: --admin-password-file is not used");
  }

  const bus = new EventBus();
  const streams = new EventStreams(bus);
  const store = o.store ?? new TaskStore(o.db);
  const previous = store.onChange;
  store.onChange = (ch) => {
    previous?.(ch);
    bus.publish({
      kind: "task",
      subject: `task:${ch.task.name}`,
      message: `task ${ch.task.name}: ${ch.from} → ${ch.to} (${ch.cause})`,
      data: { task: ch.task.name, from: ch.from, to: ch.to, event: ch.event, cause: ch.cause },
    });
    audit.record({
      subject: `task:${ch.task.name}`,
      kind: "task",
      from: ch.from,
      to: ch.to,
      cause: ch.cause,
    });
  };
  const previousFailure = store.onFailure;
  store.onFailure = (task, failure, before) => {
    previousFailure?.(task, failure, before);
    const message = failure
      ? `task ${task}: ${failure.action} failed: ${failure.reason}`
      : `task ${task}: ${before?.action} succeeded (it had failed)`;
    bus.publish({ kind: "task", subject: `task:${task}`, message, data: { task, failure: failure ?? null } });
    audit.record({ subject: `task:${task}`, kind: "task", cause: message });
  };
  const collector = new StatusCollector({ bus, status: o.status, db: o.db, recoveries: o.recoveries });
  await collector.start();
  let following = false;
  const unfollow = o.followTasks
    ? bus.subscribe(new Set(["status"]), (e) => {
      if (following) return;
      following = true;
      (async () => {
        const recoveries = o.recoveries ? await o.recoveries() : [];
        await followTasks(store, e.data as Parameters<typeof followTasks>[1], recoveries);
      })().catch((err) => log.warn("cannot follow the tasks' copies", { error: err }))
        .finally(() => following = false);
    })
    : () => {};

  const counters = { loginFailures: 0 };
  const access: AccessDeps = {
    users,
    sessions: new Sessions(o.db, o.sessions),
    tokens: new ApiTokens(o.db, o.fileToken),
    setup,
    limiter: new FailureLimiter(o.loginLimit?.max ?? 5, o.loginLimit?.windowMs ?? 60_000),
    audit,
    secure: o.tls !== undefined,
    counters,
  };

  const app = new Hono();
  app.use("*", securityHeaders(o.tls !== undefined));
  app.use("*", async (c, next) => {
    await next();
    if (c.req.path.startsWith("/api/") || c.req.path === "/metrics") {
      c.res.headers.set("cache-control", "no-store");
    }
  });
  // bodies over the limit are refused before a route reads them, with or without a declared length
  app.use("*", bodyLimit({ maxSize: MAX_BODY, onError: () => Promise.reject(tooLarge()) }));
  const guard = accessControl(access);
  app.use("/api/*", guard);
  app.use("/metrics", guard);

  accessRoutes(app, access);
  app.get("/api/status", (c) => c.json(o.status()));
  app.get("/api/audit", async (c) => {
    const limit = Math.min(1000, Math.max(1, Number(c.req.query("limit") ?? 200) || 200));
    return c.json(await audit.recent(limit));
  });
  app.get("/api/events", (c) => {
    let kinds;
    try {
      kinds = parseFilter(c.req.query("filter"));
    } catch (e) {
      throw new HttpError(400, (e as Error).message);
    }
    const last = Number(c.req.header("last-event-id") ?? c.req.query("after"));
    const replay = Number(c.req.query("replay") ?? 100);
    const p = c.get("principal");
    const session = p.session;
    return streams.response({
      kinds,
      lastId: Number.isInteger(last) && last >= 0 ? last : undefined,
      replay: Number.isInteger(replay) ? Math.max(0, Math.min(500, replay)) : 100,
      alive: () => session ? access.sessions.alive(session.idHash) : access.tokens.live(p.name),
    });
  });
  app.get("/api/events/recent", (c) => {
    let kinds;
    try {
      kinds = parseFilter(c.req.query("filter"));
    } catch (e) {
      throw new HttpError(400, (e as Error).message);
    }
    const limit = Math.max(1, Math.min(500, Number(c.req.query("limit") ?? 100) || 100));
    return c.json(bus.recent({ kinds, limit }));
  });
  app.get("/metrics", async (c) => {
    const text = renderMetrics({
      status: o.status(),
      rates: collector.rates.sites,
      recoveries: o.recoveries
        ? await o.recoveries().catch((e) => {
          // the other metrics are still worth serving
          log.warn("cannot read the recoveries for /metrics", { error: e });
          return [];
        })
        : undefined,
      tasks: await store.listTasks(),
      web: { loginFailures: counters.loginFailures, eventStreams: streams.count },
    });
    return c.body(text, 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
  });
  taskRoutes(app, {
    store,
    actions: o.actions,
    audit,
    status: o.status,
    adoptable: o.discovery ? (g) => o.discovery!.adoptable(g) : undefined,
  });
  if (o.discovery) discoveryRoutes(app, o.discovery);
  o.routes?.(app);
  // the API's routes (for automation, and for the tests that check each one needs a login)
  app.get("/api/routes", (c) => {
    const seen = new Set<string>();
    const out: { method: string; path: string }[] = [];
    for (const r of app.routes) {
      if (r.method === "ALL" || !(r.path.startsWith("/api/") || r.path === "/metrics")) continue;
      const k = `${r.method} ${r.path}`;
      if (!seen.has(k)) out.push({ method: r.method, path: r.path });
      seen.add(k);
    }
    return c.json(out);
  });
  app.all("/api/*", (c) => c.json({ error: `no route ${c.req.method} ${c.req.path}` }, 404));

  // the UI: its bundle, and index.html for every page path (the page routes itself)
  app.get("/app.js", async (c) => {
    const js = await readBundle();
    if (!js) return c.text("// the web UI is not built: npx deno run -A src/web/ui-bundle.ts\n", 404);
    return c.body(js as Uint8Array<ArrayBuffer>, 200, {
      "content-type": "text/javascript; charset=utf-8",
      "cache-control": "no-cache",
    });
  });
  app.get("*", async (c) => {
    if (/\.[A-Za-z0-9]+$/.test(c.req.path)) return c.text("not found", 404);
    const built = (await readBundle()) !== undefined;
    return c.html(built ? INDEX_HTML : NOT_BUILT_HTML, 200, { "cache-control": "no-cache" });
  });
  app.notFound((c) => c.json({ error: `no route ${c.req.method} ${c.req.path}` }, 404));
  app.onError((e, c) => {
    const r = errorResponse(c, e);
    if (r) return r;
    log.error("request failed", { path: c.req.path, error: e });
    return c.json({ error: `internal error: ${(e as Error).message}` }, 500);
  });

  const server = serveHttp(o.listen, o.tls, app.fetch);
  const scheme = o.tls ? "https" : "http";
  const url = `${scheme}://${urlHost(o.listen.hostname)}:${server.port}`;
  if (setupToken) {
    // the one place the token is shown: stdout, once (not the JSON log on stderr)
    (o.printSetup ?? ((l) => console.log(l)))(`setup-url=${url}/setup#${setupToken}`);
    log.info("no user yet: open the setup link printed on stdout (valid 30 minutes, once)");
  }
  return {
    port: server.port,
    url,
    bus,
    store,
    collector,
    close: async () => {
      unfollow();
      collector.stop();
      streams.closeAll();
      await server.close();
    },
  };
}
