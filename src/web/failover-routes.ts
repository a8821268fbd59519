// API routes for the service switch: operator failover and failback (the audit log is the web
// server's GET /api/audit).
import type { Hono } from "hono";
import type { FailoverController } from "../failover/controller.ts";
import { FailbackError, type FailbackReport } from "../failover/failback.ts";
import { logger } from "../log.ts";

const log = logger("http");

export function failoverRoutes(
  app: Hono,
  controller: FailoverController,
  dataFailback: (name: string) => Promise<FailbackReport>,
): void {
  app.get("/api/services", (c) => c.json(controller.status()));
  app.post("/api/services/:name/failover", async (c) => {
    const name = c.req.param("name");
    if (!controller.status().some((s) => s.name === name)) {
      return c.json({ error: `no protected service "${name}"` }, 404);
    }
    try {
      await controller.failover(name, "operator request");
      return c.json({ ok: true, service: controller.status().find((s) => s.name === name) });
    } catch (e) {
      return c.json({ error: (e as Error).message }, 409);
    }
  });
  // ?traffic-only=1: only the DNAT rule goes (the local side already holds current data);
  // otherwise the data comes back first. ?wait=1 answers when it is over, else 202 at once.
  app.post("/api/services/:name/failback", async (c) => {
    const name = c.req.param("name");
    const service = controller.status().find((s) => s.name === name);
    if (!service) return c.json({ error: `no protected service "${name}"` }, 404);
    if (service.failback) {
      return c.json({ error: `a failback of ${name} is running (${service.failback})` }, 409);
    }
    if (c.req.query("traffic-only") === "1" || service.state !== "failed-over") {
      try {
        await controller.failback(name);
        return c.json({ ok: true, service: controller.status().find((s) => s.name === name) });
      } catch (e) {
        return c.json({ error: (e as Error).message }, 409);
      }
    }
    const run = dataFailback(name);
    if (c.req.query("wait") === "1") {
      try {
        return c.json({ ok: true, report: await run });
      } catch (e) {
        return c.json({ error: (e as Error).message }, e instanceof FailbackError ? e.status : 409);
      }
    }
    run.catch((e) => log.error("failback stopped", { service: name, error: e }));
    // refusals found before anything moved are answered now
    const early = await Promise.race([
      run.then(() => undefined, (e) => e),
      new Promise((r) => setTimeout(r, 200)),
    ]);
    if (early instanceof Error) {
      return c.json({ error: early.message }, early instanceof FailbackError ? early.status : 409);
    }
    return c.json(
      { ok: true, started: true, service: controller.status().find((s) => s.name === name) },
      202,
    );
  });
}
