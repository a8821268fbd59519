// API routes for the service switch: operator failover and failback (the audit log is the web
// server's GET /api/audit).
import { heldPointSchema } from "../tasks/model.ts";
import type { Hono } from "hono";
import type { FailoverController } from "../failover/controller.ts";
import { FailbackError, type StartedFailback } from "../failover/failback.ts";
import { logger } from "../log.ts";

const log = logger("http");

export function failoverRoutes(
  app: Hono,
  controller: FailoverController,
  dataFailback: (name: string) => StartedFailback,
  /** Rejects with the reason when the service's site does not hold the point for every volume. */
  checkPoint?: (agent: string, site: string, point: number | string) => Promise<void>,
): void {
  app.get("/api/services", (c) => c.json(controller.status()));
  app.post("/api/services/:name/failover", async (c) => {
    const name = c.req.param("name");
    if (!controller.status().some((s) => s.name === name)) {
      return c.json({ error: `no protected service "${name}"` }, 404);
    }
    // an optional body {"point": SEQ | NAME}: the standby is rolled back to that point first
    let point: number | string | undefined;
    if (Number(c.req.header("content-length") ?? 0) > 0) {
      // a body that is not JSON is refused below like any other wrong body
      const body = await c.req.json().catch(() => undefined) as { point?: unknown } | undefined;
      const p = body?.point;
      const valid = heldPointSchema.safeParse(p).success;
      if (!body || Object.keys(body).some((k) => k !== "point") || (p !== undefined && !valid)) {
        return c.json({ error: 'the body is {"point": SEQUENCE or CHECKPOINT NAME}' }, 400);
      }
      point = p as number | string | undefined;
    }
    try {
      if (point !== undefined) {
        const s = controller.status().find((x) => x.name === name)!;
        if (!checkPoint) return c.json({ error: "this gateway cannot fail over to a point" }, 409);
        // checked before the primary is fenced: a bad point changes nothing
        await checkPoint(s.agent, s.site, point);
      }
      await controller.failover(
        name,
        `operator request${point === undefined ? "" : ` at point ${point}`}`,
        {},
        point,
      );
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
    // refusals found before anything moved are answered now
    const started = dataFailback(name);
    if ("refused" in started) return c.json({ error: started.refused.message }, started.refused.status);
    if (c.req.query("wait") === "1") {
      try {
        return c.json({ ok: true, report: await started.done });
      } catch (e) {
        return c.json({ error: (e as Error).message }, e instanceof FailbackError ? e.status : 409);
      }
    }
    started.done.catch((e) => log.error("failback stopped", { service: name, error: e }));
    return c.json(
      { ok: true, started: true, service: controller.status().find((s) => s.name === name) },
      202,
    );
  });
}
