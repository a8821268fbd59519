// The task API: CRUD of sites, hosts, volumes (partitions) and tasks, the task actions through
// the state machine and the injected TaskActions, schedules and recovery candidates. Bodies are
// checked with the model's schemas; every change is written to the audit log with who made it.
import { NAME_RE } from "../names.ts";
import type { Context, Hono } from "hono";
import { z } from "zod";
import type { Audit } from "../audit/audit.ts";
import {
  allowedEvents,
  type Group,
  hostSchema,
  type Issue,
  nameSchema,
  siteSchema,
  type Task,
  type TaskEvent,
  taskInputSchema,
  transition,
  type Volume,
  volumeSchema,
  zodIssues,
} from "../tasks/model.ts";
import { type ProblemStatusView, retryable, taskProblems } from "../tasks/problems.ts";
import type { TaskStore } from "../tasks/store.ts";
import {
  type ActionResult,
  emptySchema,
  failbackSchema,
  failoverSchema,
  failoverTestSchema,
  pauseSchema,
  recoverSchema,
  type RecoveryPoint,
  scheduleSchema,
  type TaskActions,
} from "../tasks/actions.ts";
import { HttpError, readBody, readJson, validate } from "./http.ts";
import { logger } from "../log.ts";

const log = logger("task-routes");

export function who(c: Context): string {
  const p = c.get("principal");
  return p ? `${p.kind === "token" ? "token" : "user"} ${p.name}` : "unknown";
}

/** A name from the URL, checked like a name in a body. */
export function param(c: Context, what: string): string {
  const name = c.req.param("name") ?? "";
  if (!NAME_RE.test(name)) {
    throw new HttpError(400, `${what} name in the URL: must be 1 to 64 of A-Z a-z 0-9 . _ -`);
  }
  return name;
}

/** A PUT body: the name may be left out, and if given must be the URL's (no renaming). */
async function putBody<S extends z.ZodType>(c: Context, schema: S, name: string): Promise<z.infer<S>> {
  const raw = await readJson(c);
  if (raw && typeof raw === "object" && !Array.isArray(raw)) {
    const o = raw as Record<string, unknown>;
    if (o.name !== undefined && o.name !== name) {
      throw new HttpError(400, `name: must be "${name}" as in the URL (renaming is not supported)`, [
        { path: "name", message: `must be "${name}" as in the URL` },
      ]);
    }
    return validate({ ...o, name }, schema);
  }
  return validate(raw, schema);
}

/** A task as the API shows it: with the events its state allows and what keeps it from being protected. */
function taskJson(t: Task, status: ProblemStatusView = {}) {
  return { ...t, allowed: allowedEvents(t.state), problems: taskProblems(t, status) };
}

export interface TaskRoutesDeps {
  store: TaskStore;
  actions: TaskActions;
  audit?: Audit;
  /** The gateway's status (assignments, links): the tasks' problems come from it. */
  status?: () => ProblemStatusView;
  /** The gateways' copies a group names that are not registered yet (discovery.ts): registered with the task. */
  adoptable?: (group: Group) => Promise<Volume[]>;
}

/** Actions whose failure stays on the task (its `failure`) until one succeeds. */
const KEPT_FAILURES = new Set(["start", "resume"]);

/** POST /api/tasks/check: a task body whose name may still be missing (the wizard checks each step). */
const checkSchema = taskInputSchema.extend({ name: nameSchema.optional() });

interface ActionSpec {
  event: TaskEvent;
  schema: z.ZodType;
  run: (a: TaskActions, t: Task, body: never) => Promise<ActionResult | void>;
}

/** POST /api/tasks/:name/actions/:action — each action, its state-machine event and body. */
export const ACTIONS: Record<string, ActionSpec> = {
  start: { event: "start", schema: emptySchema, run: (a, t) => a.start(t) },
  pause: { event: "pause", schema: pauseSchema, run: (a, t, b) => a.pause(t, b) },
  resume: { event: "resume", schema: emptySchema, run: (a, t) => a.resume(t) },
  "failover-test": {
    event: "failover-test",
    schema: failoverTestSchema,
    run: (a, t, b) => a.failoverTest(t, b),
  },
  "end-test": { event: "test-done", schema: emptySchema, run: (a, t) => a.endFailoverTest(t) },
  failover: { event: "failover", schema: failoverSchema, run: (a, t, b) => a.failover(t, b) },
  failback: { event: "failback", schema: failbackSchema, run: (a, t, b) => a.failback(t, b) },
  recover: { event: "recover", schema: recoverSchema, run: (a, t, b) => a.recover(t, b) },
};

/** `?point=`: latest (or absent), seq:N, time:ISO-8601 or time:MS. */
export function parsePoint(text: string | undefined): RecoveryPoint {
  if (!text || text === "latest") return {};
  let m = /^seq:(\d{1,15})$/.exec(text);
  if (m) return { seq: Number(m[1]) };
  m = /^time:(.+)$/.exec(text);
  if (m) {
    const t = /^\d{1,15}$/.test(m[1]) ? Number(m[1]) : Date.parse(m[1]);
    if (Number.isFinite(t) && t > 0) return { time: t };
  }
  throw new HttpError(400, `point: "${text}" is not a recovery point (use latest, seq:N or time:ISO-8601)`, [
    { path: "point", message: "use latest, seq:N or time:ISO-8601" },
  ]);
}

export function taskRoutes(app: Hono, d: TaskRoutesDeps): void {
  const { store } = d;
  const record = (subject: string, kind: string, cause: string, extra: { from?: string; to?: string } = {}) =>
    d.audit?.record({ subject, kind, cause, ...extra });

  // ---------------------------------------------------------------- inventory CRUD
  const crud = <S extends z.ZodType<{ name: string }>, R>(
    path: string,
    what: string,
    schema: S,
    ops: {
      list: () => Promise<R[]>;
      get: (n: string) => Promise<R>;
      create: (v: z.infer<S>) => Promise<R>;
      update: (v: z.infer<S>) => Promise<R>;
      remove: (n: string) => Promise<void>;
    },
  ) => {
    app.get(`/api/${path}`, async (c) => c.json(await ops.list()));
    app.get(`/api/${path}/:name`, async (c) => c.json(await ops.get(param(c, what))));
    app.post(`/api/${path}`, async (c) => {
      const v = await readBody(c, schema);
      const r = await ops.create(v);
      await record(`${what}:${v.name}`, "config", `${what} ${v.name} created by ${who(c)}`);
      return c.json(r, 201);
    });
    app.put(`/api/${path}/:name`, async (c) => {
      const name = param(c, what);
      const v = await putBody(c, schema, name);
      const r = await ops.update(v);
      await record(`${what}:${name}`, "config", `${what} ${name} changed by ${who(c)}`);
      return c.json(r);
    });
    app.delete(`/api/${path}/:name`, async (c) => {
      const name = param(c, what);
      await ops.remove(name);
      await record(`${what}:${name}`, "config", `${what} ${name} deleted by ${who(c)}`);
      return c.json({ ok: true });
    });
  };
  crud("sites", "site", siteSchema, {
    list: () => store.listSites(),
    get: (n) => store.getSite(n),
    create: (v) => store.createSite(v),
    update: (v) => store.updateSite(v),
    remove: (n) => store.deleteSite(n),
  });
  crud("hosts", "host", hostSchema, {
    list: () => store.listHosts(),
    get: (n) => store.getHost(n),
    create: (v) => store.createHost(v),
    update: (v) => store.updateHost(v),
    remove: (n) => store.deleteHost(n),
  });
  crud("volumes", "volume", volumeSchema, {
    list: () => store.listVolumes(),
    get: (n) => store.getVolume(n),
    create: (v) => store.createVolume(v),
    update: (v) => store.updateVolume(v),
    remove: (n) => store.deleteVolume(n),
  });

  // ---------------------------------------------------------------- tasks
  const view = (t: Task) => taskJson(t, d.status?.());
  const adopt = (g: Group) => d.adoptable?.(g) ?? Promise.resolve([]);
  app.get("/api/tasks", async (c) => {
    const status = d.status?.();
    return c.json((await store.listTasks()).map((t) => taskJson(t, status)));
  });
  // checks a task as the wizard has it so far, without creating it: 200 with the problems by field
  app.post("/api/tasks/check", async (c) => {
    const raw = await readJson(c);
    const parsed = checkSchema.safeParse(raw);
    const issues: Issue[] = parsed.success ? [] : zodIssues(parsed.error);
    if (parsed.success) {
      const t = { ...parsed.data, name: parsed.data.name ?? "" };
      issues.push(...await store.issues(t, await adopt(t.group)));
    }
    return c.json({ issues });
  });
  app.get("/api/tasks/:name", async (c) => c.json(view(await store.getTask(param(c, "task")))));
  app.post("/api/tasks", async (c) => {
    const t = await readBody(c, taskInputSchema);
    const r = await store.createTask(t, await adopt(t.group));
    await record(`task:${t.name}`, "task", `task ${t.name} created by ${who(c)}`, { to: r.state });
    return c.json(view(r), 201);
  });
  app.put("/api/tasks/:name", async (c) => {
    const name = param(c, "task");
    const t = await putBody(c, taskInputSchema, name);
    const r = await store.updateTask(t, await adopt(t.group));
    await record(`task:${name}`, "task", `task ${name} changed by ${who(c)}`);
    return c.json(view(r));
  });
  app.delete("/api/tasks/:name", async (c) => {
    const name = param(c, "task");
    const task = await store.getTask(name);
    await store.deleteTask(name);
    // after the store accepted the deletion (only configured or paused tasks): undo the start
    await d.actions.remove?.(task);
    await record(`task:${name}`, "task", `task ${name} deleted by ${who(c)}`);
    return c.json({ ok: true });
  });

  // ---------------------------------------------------------------- actions
  /** Runs an action through the state machine; a failed start or resume stays on the task. */
  const runAction = async (c: Context, name: string, action: string, body: unknown) => {
    const spec = ACTIONS[action];
    const task = await store.getTask(name);
    transition(task.state, spec.event); // refuses before anything runs
    let result: ActionResult;
    try {
      result = (await spec.run(d.actions, task, body as never)) ?? {};
    } catch (e) {
      const status = (e as { status?: number }).status;
      if (KEPT_FAILURES.has(action) && status !== 400 && status !== 404) {
        await store.setFailure(name, { action, reason: (e as Error).message, at: Date.now() });
      }
      throw e;
    }
    if (KEPT_FAILURES.has(action)) await store.setFailure(name, undefined);
    const cause = `${action} by ${who(c)}${result.message ? `: ${result.message}` : ""}`;
    const change = await store.applyEvent(name, spec.event, cause, task.state);
    let final = change.task;
    for (const e of result.then ?? []) {
      final = (await store.applyEvent(name, e, `${e} (${action} by ${who(c)} done)`)).task;
    }
    const from = final.state;
    result.later?.then(({ event, cause }) => store.applyEvent(name, event, cause, from)).catch((e) =>
      log.error("cannot record the end of a background action", { task: name, action, error: e })
    );
    return c.json({
      // an action that deleted the task (remove) answers with the task as it left it
      task: view(await store.getTask(name).catch(() => final)),
      from: change.from,
      to: final.state,
      ...(result.message ? { message: result.message } : {}),
      ...(result.detail ? { detail: result.detail } : {}),
    });
  };
  app.post("/api/tasks/:name/actions/:action", async (c) => {
    const name = param(c, "task");
    const action = c.req.param("action");
    const spec = Object.hasOwn(ACTIONS, action) ? ACTIONS[action] : undefined;
    if (!spec) {
      throw new HttpError(404, `no action "${action}"; actions: ${Object.keys(ACTIONS).join(", ")}`);
    }
    return await runAction(c, name, action, await readBody(c, spec.schema, true));
  });
  // one click on a failure: the failed start or resume again, or the refused assignments again
  app.post("/api/tasks/:name/retry", async (c) => {
    const name = param(c, "task");
    await readBody(c, emptySchema, true);
    const task = await store.getTask(name);
    const failed = task.failure?.action;
    if (
      failed && Object.hasOwn(ACTIONS, failed) && allowedEvents(task.state).includes(ACTIONS[failed].event)
    ) {
      return await runAction(c, name, failed, {});
    }
    if (!d.actions.retry || !retryable(taskProblems(task, d.status?.() ?? {}))) {
      throw new HttpError(409, `task "${name}" has no failed step to retry`);
    }
    const result = (await d.actions.retry(task)) ?? {};
    await record(`task:${name}`, "task", `retry by ${who(c)}${result.message ? `: ${result.message}` : ""}`);
    return c.json({ task: view(await store.getTask(name)), to: task.state, message: result.message });
  });

  app.get("/api/tasks/:name/recovery-candidates", async (c) => {
    const task = await store.getTask(param(c, "task"));
    const point = parsePoint(c.req.query("point"));
    const strategy = c.req.query("strategy") ?? "fast";
    if (strategy !== "fast" && strategy !== "full") {
      throw new HttpError(400, 'strategy: must be "fast" or "full"', [{
        path: "strategy",
        message: 'must be "fast" or "full"',
      }]);
    }
    return c.json(await d.actions.recoveryCandidates(task, point, strategy));
  });

  app.get("/api/tasks/:name/schedules", async (c) => {
    const task = await store.getTask(param(c, "task"));
    return c.json(await d.actions.listSchedules(task));
  });
  app.post("/api/tasks/:name/schedules", async (c) => {
    const name = param(c, "task");
    const body = await readBody(c, scheduleSchema);
    const task = await store.getTask(name);
    if (task.state === "configured") {
      throw new HttpError(409, `task "${name}" is configured: start it before scheduling (nothing runs yet)`);
    }
    const s = await d.actions.schedule(task, body);
    await record(
      `task:${name}`,
      "task",
      `${body.action} scheduled for ${new Date(body.at).toISOString()} by ${who(c)}`,
    );
    return c.json(s, 201);
  });
  app.delete("/api/tasks/:name/schedules/:id", async (c) => {
    const name = param(c, "task");
    const id = c.req.param("id");
    if (!NAME_RE.test(id)) {
      throw new HttpError(400, "schedule id in the URL: not a valid id");
    }
    const task = await store.getTask(name);
    await d.actions.cancelSchedule(task, id);
    await record(`task:${name}`, "task", `schedule ${id} cancelled by ${who(c)}`);
    return c.json({ ok: true });
  });
}
