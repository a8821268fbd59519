// A gateway's HTTP API (hono): JSON status for monitoring. Every route requires
// the API token; the web UI and its login come on top of this.
import { Hono } from "hono";
import { logger } from "../log.ts";
import { tokenMatches } from "./token.ts";
import type { Address } from "../link/address.ts";

const log = logger("http");

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
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ hostname: o.listen.hostname, port: o.listen.port, onListen: () => {} }, app.fetch);
  } catch (e) {
    const why = e instanceof Deno.errors.AddrInUse
      ? "address in use (another Continuum running?)"
      : (e as Error).message;
    throw new Error(`cannot listen on ${o.listen.hostname}:${o.listen.port} for HTTP: ${why}`);
  }
  return {
    port: server.addr.port,
    close: () => server.shutdown(),
  };
}
