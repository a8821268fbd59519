// API routes of recovery points (issue 15): each remote site's points of a task's volume, with
// its retention window, and named checkpoints.
import type { Hono } from "hono";
import { z } from "zod";
import { must } from "../tasks/model.ts";
import type { TaskStore } from "../tasks/store.ts";
import { volumeKey } from "../tasks/gateway-actions.ts";
import { PointsError, type RecoveryPoints } from "../points/points.ts";
import { HttpError, readBody } from "./http.ts";
import { param, who } from "./task-routes.ts";

const checkpointSchema = z.object({
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

export function pointsRoutes(app: Hono, d: { store: TaskStore; points: RecoveryPoints }): void {
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
    const body = await readBody(c, checkpointSchema);
    const made = await d.points.checkpoint(task.name, volume, sites, body.name, who(c)).catch(asHttp);
    return c.json({ volume, ...made }, 201);
  });
}
