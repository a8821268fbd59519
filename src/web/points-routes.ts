// API routes of recovery points (issue 15): each remote site's points of a task's volume, with
// its retention window, and named checkpoints.
import type { Hono } from "hono";
import { z } from "zod";
import { heldPointSchema, must, nameSchema } from "../tasks/model.ts";
import type { TaskStore } from "../tasks/store.ts";
import { volumeKey } from "../tasks/gateway-actions.ts";
import { PointsError, type RecoveryPoints } from "../points/points.ts";
import type { PointSearch } from "../points/search.ts";
import { HttpError, readBody } from "./http.ts";
import { param, who } from "./task-routes.ts";

const searchSchema = z.object({
  /** The remote center whose points are searched (default: the task's first). */
  site: nameSchema.optional(),
  /** The known-good point: a sequence number or a checkpoint name (default: the oldest held). */
  good: heldPointSchema.optional(),
  /** The check: a program and its arguments (no shell); "{uri}" is the test copy's NBD URI. */
  check: z.array(z.string().min(1).max(4096), { error: must("a list of strings (program, arguments)") })
    .min(1, "must name a program").max(64),
  timeoutSeconds: z.number({ error: must("a number of seconds") }).int("must be a whole number")
    .min(1, "must be at least 1 s").max(3600, "must be at most 3600 s").default(300),
}).strict();

const checkheldPointSchema = z.object({
  name: z.string({ error: must("a checkpoint name") }),
}).strict();

async function taskVolume(store: TaskStore, name: string) {
  const task = await store.getTask(name);
  return { task, volume: await volumeKey(store, task), sites: task.group.remotes.map((r) => r.site) };
}

function asHttp(e: unknown): never {
  if (e instanceof PointsError) throw new HttpError(e.status, e.message);
  throw e;
}

export function pointsRoutes(
  app: Hono,
  d: { store: TaskStore; points: RecoveryPoints; search: PointSearch },
): void {
  app.get("/api/tasks/:name/points", async (c) => {
    const { volume, sites } = await taskVolume(d.store, param(c, "task"));
    const site = c.req.query("site");
    if (site !== undefined && !sites.includes(site)) {
      throw new HttpError(
        400,
        `site "${site}" is not a remote center of the task (its centers: ${sites.join(", ")})`,
      );
    }
    const limit = Math.max(1, Math.min(100_000, Number(c.req.query("limit") ?? 1000) || 1000));
    return c.json({ volume, ...await d.points.list(volume, site ? [site] : sites, limit) });
  });
  app.get("/api/tasks/:name/checkpoints", async (c) => {
    const { volume } = await taskVolume(d.store, param(c, "task"));
    return c.json(await d.points.checkpoints(volume));
  });
  app.post("/api/tasks/:name/checkpoints", async (c) => {
    const { task, volume, sites } = await taskVolume(d.store, param(c, "task"));
    const body = await readBody(c, checkheldPointSchema);
    const made = await d.points.checkpoint(task.name, volume, sites, body.name, who(c)).catch(asHttp);
    return c.json({ volume, ...made }, 201);
  });
  // bisects the site's points with the check; answers once the search is over
  app.post("/api/tasks/:name/point-search", async (c) => {
    const { task, volume, sites } = await taskVolume(d.store, param(c, "task"));
    const body = await readBody(c, searchSchema);
    const site = body.site ?? sites[0];
    if (!sites.includes(site)) {
      throw new HttpError(
        400,
        `site "${site}" is not a remote center of the task (its centers: ${sites.join(", ")})`,
      );
    }
    return c.json(await d.search.run(task.name, volume, { ...body, site }, who(c)).catch(asHttp));
  });
}
