// A gateway's HTTP API (hono), token-only: JSON status for monitoring. Every route requires
// the API token. The remote gateway serves this; the local gateway serves the full web server
// (web-server.ts: UI, login, tasks, events, metrics), which shares serveHttp below.
import { Hono } from "hono";
import { logger } from "../log.ts";
import { tokenMatches } from "./token.ts";
import type { Address } from "../link/address.ts";

const log = logger("http");

/** A certificate chain and its private key, PEM files. */
export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

export interface StatusServerOptions {
  listen: Address & { transport: "tcp" };
  token: string;
  status: () => unknown;
  /** Extra routes (added before the server starts). */
  routes?: (app: Hono) => void;
}

export interface StatusServer {
  port: number;
  close(): Promise<void>;
}

/** Reads the PEM files; errors name the file. The key must not be readable by group or others. */
export function readTls(t: TlsFiles): { cert: string; key: string } {
  const read = (path: string, what: string) => {
    try {
      return Deno.readTextFileSync(path);
    } catch (e) {
      throw new Error(`cannot read the TLS ${what} ${path}: ${(e as Error).message}`);
    }
  };
  const cert = read(t.certFile, "certificate");
  const key = read(t.keyFile, "key");
  const mode = Deno.statSync(t.keyFile).mode;
  if (mode !== null && (mode & 0o077) !== 0) {
    throw new Error(`TLS key ${t.keyFile} is readable by group or others (chmod 600 it)`);
  }
  if (!cert.includes("-----BEGIN CERTIFICATE-----")) {
    throw new Error(`${t.certFile} holds no PEM certificate`);
  }
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key)) {
    throw new Error(`${t.keyFile} holds no PEM private key`);
  }
  return { cert, key };
}

/** Deno.serve on `listen` (HTTPS with `tls`), passing the connection info to the handler as its env. */
export function serveHttp(
  listen: Address & { transport: "tcp" },
  tls: TlsFiles | undefined,
  fetch: (req: Request, env: { remoteAddr: Deno.NetAddr }) => Response | Promise<Response>,
): StatusServer {
  const pem = tls ? readTls(tls) : undefined;
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve(
      { hostname: listen.hostname, port: listen.port, onListen: () => {}, ...(pem ?? {}) },
      (req, info) => fetch(req, { remoteAddr: info.remoteAddr }),
    );
  } catch (e) {
    const why = e instanceof Deno.errors.AddrInUse
      ? "address in use (another Continuum running?)"
      : (e as Error).message;
    throw new Error(`cannot listen on ${listen.hostname}:${listen.port} for HTTP: ${why}`);
  }
  return {
    port: server.addr.port,
    close: () => server.shutdown(),
  };
}

export function startStatusServer(o: StatusServerOptions): StatusServer {
  const app = new Hono();
  app.use("/api/*", async (c, next) => {
    if (!tokenMatches(c.req.header("authorization"), o.token)) {
      return c.json({ error: "authentication required: send Authorization: Bearer <api token>" }, 401);
    }
    await next();
  });
  app.get("/api/status", (c) => c.json(o.status()));
  o.routes?.(app);
  app.notFound((c) => c.json({ error: `no route ${c.req.method} ${c.req.path}` }, 404));
  app.onError((e, c) => {
    log.error("request failed", { path: c.req.path, error: e });
    return c.json({ error: e.message }, 500);
  });
  return serveHttp(o.listen, undefined, app.fetch);
}
