// API routes for the service switch: operator failover and failback, and the audit log.
import type { Hono } from "hono";
import type { Audit } from "../audit/audit.ts";
import type { FailoverController } from "../failover/controller.ts";

export function failoverRoutes(app: Hono, controller: FailoverController, audit: Audit): void {
  app.get("/api/services", (c) => c.json(controller.status()));
  app.get("/api/audit", async (c) => {
    const limit = Math.min(1000, Math.max(1, Number(c.req.query("limit") ?? 200) || 200));
    return c.json(await audit.recent(limit));
  });
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
  app.post("/api/services/:name/failback", async (c) => {
    const name = c.req.param("name");
    if (!controller.status().some((s) => s.name === name)) {
      return c.json({ error: `no protected service "${name}"` }, 404);
    }
    try {
      await controller.failback(name);
      return c.json({ ok: true, service: controller.status().find((s) => s.name === name) });
    } catch (e) {
      return c.json({ error: (e as Error).message }, 409);
    }
  });
}
