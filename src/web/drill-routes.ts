// API routes of failover drills (src/drills/) and of the detector's QoS per agent link: start a
// drill now (`?wait=1` answers once it is graded) or schedule it, list the history, cancel a
// scheduled one; the links' targets, derived settings, predicted and observed QoS.
import type { Hono } from "hono";
import { z } from "zod";
import { must, nameSchema } from "../tasks/model.ts";
import type { Drills } from "../drills/drills.ts";
import type { LinkQos } from "../failover/detector-qos.ts";
import { HttpError, readBody } from "./http.ts";
import { param, who } from "./task-routes.ts";

export const drillRequestSchema = z.object({
  /** The remote center to drill (default: one with a consistent copy). */
  site: nameSchema.optional(),
  /** Later: when (ms since the epoch, the gateway's clock). */
  at: z.number({ error: must("a time in ms since the epoch") }).int("must be a whole number")
    .refine((t) => t > Date.now(), "must be in the future").optional(),
  /** With `at`: again every this many hours. */
  everyHours: z.number({ error: must("a number of hours") }).min(1, "must be at least 1 hour")
    .max(8760, "must be at most 8760 hours (a year)").optional(),
}).strict().refine((b) => b.everyHours === undefined || b.at !== undefined, {
  message: "needs at (the first drill's time)",
  path: ["everyHours"],
});

function drillId(text: string | undefined): number {
  const id = Number(text);
  if (!Number.isSafeInteger(id) || id < 1) throw new HttpError(400, `drill id "${text}": not a drill number`);
  return id;
}

export function drillRoutes(app: Hono, d: { drills: Drills; links: () => LinkQos[] }): void {
  app.get("/api/detector", (c) => c.json(d.links()));
  app.get("/api/drills", async (c) => c.json(await d.drills.list()));
  app.get("/api/drills/:id", async (c) => c.json(await d.drills.get(drillId(c.req.param("id")))));
  app.get("/api/tasks/:name/drills", async (c) => c.json(await d.drills.list(param(c, "task"))));
  app.post("/api/tasks/:name/drills", async (c) => {
    const name = param(c, "task");
    const body = await readBody(c, drillRequestSchema, true);
    if (body.at !== undefined) {
      const everyMs = body.everyHours === undefined ? undefined : Math.round(body.everyHours * 3_600_000);
      return c.json(
        await d.drills.schedule(name, { site: body.site, at: body.at, everyMs, requestedBy: who(c) }),
        201,
      );
    }
    const drill = await d.drills.begin(name, { site: body.site, requestedBy: who(c) });
    if (c.req.query("wait") === "1") return c.json(await d.drills.settled(drill.id));
    return c.json(drill, 202);
  });
  app.delete("/api/tasks/:name/drills/:id", async (c) => {
    return c.json(await d.drills.cancel(param(c, "task"), drillId(c.req.param("id"))));
  });
}
