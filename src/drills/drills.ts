// Failover drills, the local gateway's half: a drill is a failover test (src/tasks/failover-tests.ts)
// that also brings the service up on the test copy: the remote center's standby agent runs its
// --on-promote hook with the copy's export and its service check (src/drills/site.ts,
// src/drills/standby.ts). It measures RTO (drill start to the check passing) and RPO (what the
// copy lacks, grade.ts), grades them against the task's targets, stops the service on the copy
// (--on-demote), discards the copy and keeps the result. Production, replication and the switch
// are not touched, as for any failover test. A failed grade raises an alarm. Drills run on
// request (API, UI, `ctl drill`) or at a scheduled time (the gateway's wall clock), repeating
// every so often if asked; a drill the gateway's restart interrupted is recorded as failed.
import { and, desc, eq, lte } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { drills } from "../db/schema.ts";
import { logger } from "../log.ts";
import type { Audit } from "../audit/audit.ts";
import type { RaiseAlarm } from "../alarms/alarm.ts";
import type { TaskStore } from "../tasks/store.ts";
import type { Targets, Task } from "../tasks/model.ts";
import type { FailoverTest } from "../tasks/failover-tests.ts";
import { ActionError } from "../tasks/actions.ts";
import { copyLag, type DrillTargets, gradeDrill } from "./grade.ts";
import type { SiteRequester } from "../wire/control.ts";

const log = logger("drills");

export interface DrillDeps {
  db: Db;
  store: TaskStore;
  audit?: Audit;
  alarm?: RaiseAlarm;
  tests: {
    begin(task: string, volume: string, site: string, durationSeconds: number): Promise<FailoverTest>;
    end(task: string): Promise<FailoverTest | undefined>;
  };
  /** The task's targets (its own, else its service's). */
  targets: (task: Task) => Targets;
  /** AGENT/NAME of the task's LSP volume. */
  volumeKey: (task: Task) => Promise<string>;
  /** The remote center to drill (the requested one, else one with a consistent copy); throws ActionError. */
  site: (task: Task, key: string, requested?: string) => string;
  /** The volume's durable sequence at this gateway now. */
  durableSeq: (key: string) => number;
  /** A control request to a remote site. */
  request: SiteRequester;
  /** How often scheduled drills are looked for. */
  checkEveryMs?: number;
}

export type DrillStatus = "scheduled" | "running" | "passed" | "failed" | "cancelled";

export interface Drill {
  id: number;
  task: string;
  site: string | null;
  status: DrillStatus;
  scheduledAt: number | null;
  everyMs: number | null;
  startedAt: number | null;
  finishedAt: number | null;
  rtoMs: number | null;
  rpoMs: number | null;
  /** Graded against these. */
  targets: DrillTargets;
  /** Why a drill failed. */
  reasons: string[];
  /** What was not graded, or went wrong without failing the grade. */
  notes: string[];
  /** The test copy the service came up on. */
  copy: { seq: number; time: number; export: string } | null;
  requestedBy: string;
  createdAt: number;
}

type Row = typeof drills.$inferSelect;

function drillOf(r: Row): Drill {
  const d = JSON.parse(r.detail) as Partial<Pick<Drill, "targets" | "reasons" | "notes" | "copy">>;
  return {
    id: r.id,
    task: r.task,
    site: r.site,
    status: r.status as DrillStatus,
    scheduledAt: r.scheduledAt,
    everyMs: r.everyMs,
    startedAt: r.startedAt,
    finishedAt: r.finishedAt,
    rtoMs: r.rtoMs,
    rpoMs: r.rpoMs,
    targets: d.targets ?? {},
    reasons: d.reasons ?? [],
    notes: d.notes ?? [],
    copy: d.copy ?? null,
    requestedBy: r.requestedBy,
    createdAt: r.createdAt,
  };
}

/** How long the standby may take to bring the service up: twice the RTO target, 10 s to 10 min. */
export function upTimeoutMs(t: DrillTargets): number {
  return Math.min(600_000, Math.max(10_000, 2 * (t.rtoMs ?? 60_000)));
}

export class Drills {
  private timer: ReturnType<typeof setInterval> | undefined;
  private readonly running = new Map<number, Promise<Drill>>();
  /** Tasks with a drill under way. */
  private readonly busy = new Set<string>();
  /** Each task's last finished drill (status, /metrics). */
  private readonly last = new Map<string, Drill>();
  private checking = false;

  constructor(private readonly d: DrillDeps) {}

  /** Records the drills a previous run left running as failed, then runs the scheduled ones when due. */
  async start(): Promise<void> {
    const left = await this.d.db.select().from(drills).where(eq(drills.status, "running"));
    for (const r of left) {
      await this.finish(r.id, {
        status: "failed",
        reasons: ["the local gateway restarted during the drill"],
      });
    }
    for (const r of await this.d.db.select().from(drills).orderBy(drills.id)) {
      if (r.status === "passed" || r.status === "failed") this.last.set(r.task, drillOf(r));
    }
    this.timer = setInterval(() => {
      if (this.checking) return;
      this.checking = true;
      this.due().catch((e) => log.warn("cannot start the scheduled drills", { error: e }))
        .finally(() => this.checking = false);
    }, this.d.checkEveryMs ?? 1000);
  }

  close(): void {
    clearInterval(this.timer);
  }

  /** Each task's last finished drill. */
  latest(): Drill[] {
    return [...this.last.values()];
  }

  async list(task?: string, limit = 100): Promise<Drill[]> {
    const q = this.d.db.select().from(drills);
    const rows = await (task ? q.where(eq(drills.task, task)) : q).orderBy(desc(drills.id)).limit(limit);
    return rows.map(drillOf);
  }

  async get(id: number): Promise<Drill> {
    const [r] = await this.d.db.select().from(drills).where(eq(drills.id, id));
    if (!r) throw new ActionError(`no drill ${id}`, 404);
    return drillOf(r);
  }

  /** Starts a drill now (the task must be protected); resolves once it runs. */
  async begin(taskName: string, o: { site?: string; requestedBy: string }): Promise<Drill> {
    const task = await this.d.store.getTask(taskName);
    if (task.state !== "protected") {
      throw new ActionError(
        `task "${task.name}" is ${task.state}: a drill needs it protected (every remote copy consistent)`,
        409,
      );
    }
    if (this.busy.has(task.name)) throw new ActionError(`task "${task.name}" already runs a drill`, 409);
    const key = await this.d.volumeKey(task);
    const site = this.d.site(task, key, o.site);
    const id = await this.insert({ task: task.name, site, status: "running", requestedBy: o.requestedBy });
    this.launch(id, task, key, site);
    return await this.get(id);
  }

  /** Schedules a drill at `at` (ms since the epoch), repeating every `everyMs` if given. */
  async schedule(
    taskName: string,
    o: { site?: string; at: number; everyMs?: number; requestedBy: string },
  ): Promise<Drill> {
    const task = await this.d.store.getTask(taskName);
    if (o.site !== undefined && !task.group.remotes.some((r) => r.site === o.site)) {
      throw new ActionError(`site "${o.site}" is not a remote center of task "${task.name}"`, 400);
    }
    const id = await this.insert({
      task: task.name,
      site: o.site ?? null,
      status: "scheduled",
      scheduledAt: o.at,
      everyMs: o.everyMs ?? null,
      requestedBy: o.requestedBy,
    });
    return await this.get(id);
  }

  async cancel(taskName: string, id: number): Promise<Drill> {
    const d = await this.get(id);
    if (d.task !== taskName) throw new ActionError(`task "${taskName}" has no drill ${id}`, 404);
    if (d.status !== "scheduled") {
      throw new ActionError(`drill ${id} is ${d.status}: only a scheduled one is cancelled`, 409);
    }
    await serialized(
      this.d.db,
      () =>
        this.d.db.update(drills).set({ status: "cancelled", finishedAt: Date.now() }).where(
          eq(drills.id, id),
        ),
    );
    return await this.get(id);
  }

  /** Resolves with the drill once it is over. */
  async settled(id: number): Promise<Drill> {
    await this.running.get(id);
    return await this.get(id);
  }

  private async due(): Promise<void> {
    const now = Date.now();
    const rows = await this.d.db.select().from(drills).where(
      and(eq(drills.status, "scheduled"), lte(drills.scheduledAt, now)),
    );
    for (const r of rows) {
      if (r.everyMs) {
        let next = r.scheduledAt! + r.everyMs;
        while (next <= now) next += r.everyMs;
        await this.insert({
          task: r.task,
          site: r.site,
          status: "scheduled",
          scheduledAt: next,
          everyMs: r.everyMs,
          requestedBy: r.requestedBy,
        });
      }
      await serialized(
        this.d.db,
        () => this.d.db.update(drills).set({ status: "running" }).where(eq(drills.id, r.id)),
      );
      try {
        const task = await this.d.store.getTask(r.task);
        if (task.state !== "protected") {
          throw new Error(`task "${task.name}" is ${task.state}, not protected`);
        }
        if (this.busy.has(task.name)) throw new Error(`task "${task.name}" already runs a drill`);
        const key = await this.d.volumeKey(task);
        const site = this.d.site(task, key, r.site ?? undefined);
        this.launch(r.id, task, key, site);
      } catch (e) {
        await this.finish(r.id, {
          status: "failed",
          reasons: [`the scheduled drill could not start: ${(e as Error).message}`],
        });
      }
    }
  }

  private launch(id: number, task: Task, key: string, site: string): void {
    this.busy.add(task.name);
    const p = this.run(id, task, key, site).catch(async (e) => {
      log.error("drill failed to run", { id, task: task.name, error: e });
      return await this.finish(id, {
        status: "failed",
        reasons: [`the drill failed to run: ${(e as Error).message}`],
      });
    }).finally(() => {
      this.running.delete(id);
      this.busy.delete(task.name);
    });
    this.running.set(id, p);
  }

  private async run(id: number, task: Task, key: string, site: string): Promise<Drill> {
    const targets: DrillTargets = {};
    const all = this.d.targets(task);
    if (all.rtoMs !== undefined) targets.rtoMs = all.rtoMs;
    if (all.rpoMs !== undefined) targets.rpoMs = all.rpoMs;
    const t0 = performance.now(), startWall = Date.now();
    const durableSeqAtStart = this.d.durableSeq(key);
    await serialized(
      this.d.db,
      () => this.d.db.update(drills).set({ startedAt: startWall, site }).where(eq(drills.id, id)),
    );
    log.warn("failover drill started", { id, task: task.name, site, volume: key });
    let test: FailoverTest;
    try {
      test = await this.d.tests.begin(
        task.name,
        key,
        site,
        Math.ceil((upTimeoutMs(targets) + 120_000) / 1000),
      );
    } catch (e) {
      return await this.finish(id, {
        status: "failed",
        targets,
        reasons: [`no test copy: ${(e as Error).message}`],
      });
    }
    const notes: string[] = [];
    const copy = { seq: test.seq, time: test.time, export: test.export };
    let up: Record<string, unknown>;
    try {
      await this.d.store.applyEvent(
        task.name,
        "failover-test",
        `failover drill ${id}: a test copy at site ${site}`,
        "protected",
      );
      const timeoutMs = upTimeoutMs(targets);
      up = await this.d.request(site, { type: "drill-up", test: test.id, timeoutMs }, timeoutMs + 30_000)
        .catch((e) => ({ ok: false, error: (e as Error).message }));
    } catch (e) {
      await this.d.tests.end(task.name);
      return await this.finish(id, { status: "failed", targets, copy, reasons: [(e as Error).message] });
    }
    const rtoMs = up.ok === true ? Math.round(performance.now() - t0) : null;
    const rpoMs = copyLag({ copySeq: test.seq, copyTime: test.time, durableSeqAtStart, startWall });
    const down = await this.d.request(site, { type: "drill-down", test: test.id }, 90_000)
      .catch((e) => ({ ok: false, error: (e as Error).message }));
    if (down.ok !== true) {
      notes.push(`the service could not be stopped on the test copy: ${down.error ?? "no reason"}`);
    }
    await this.d.tests.end(task.name);
    const grade = gradeDrill(
      {
        serviceUp: up.ok === true,
        error: up.error === undefined ? undefined : String(up.error),
        rtoMs,
        rpoMs,
      },
      targets,
    );
    await this.d.store.applyEvent(
      task.name,
      "test-done",
      `failover drill ${id} over: ${grade.passed ? "passed" : `failed (${grade.reasons.join("; ")})`}`,
      "testing",
    ).catch((e) => notes.push(`the task's state: ${(e as Error).message}`));
    return await this.finish(id, {
      status: grade.passed ? "passed" : "failed",
      rtoMs,
      rpoMs,
      targets,
      copy,
      reasons: grade.reasons,
      notes: [...grade.notes, ...notes],
    });
  }

  private async finish(
    id: number,
    r: {
      status: "passed" | "failed";
      rtoMs?: number | null;
      rpoMs?: number | null;
      targets?: DrillTargets;
      copy?: Drill["copy"];
      reasons: string[];
      notes?: string[];
    },
  ): Promise<Drill> {
    const detail = {
      targets: r.targets ?? {},
      reasons: r.reasons,
      notes: r.notes ?? [],
      copy: r.copy ?? null,
    };
    await serialized(this.d.db, () =>
      this.d.db.update(drills).set({
        status: r.status,
        finishedAt: Date.now(),
        rtoMs: r.rtoMs ?? null,
        rpoMs: r.rpoMs ?? null,
        detail: JSON.stringify(detail),
      }).where(eq(drills.id, id)));
    const d = await this.get(id);
    this.last.set(d.task, d);
    const what = `failover drill ${id} of task ${d.task} at site ${d.site ?? "?"}`;
    const measured = `RTO ${d.rtoMs === null ? "—" : `${(d.rtoMs / 1000).toFixed(2)} s`}, RPO ${
      d.rpoMs === null ? "—" : `${(d.rpoMs / 1000).toFixed(2)} s`
    }`;
    const cause = d.status === "passed"
      ? `${what} passed: ${measured}`
      : `${what} failed: ${d.reasons.join("; ")} (${measured})`;
    this.d.audit?.record({
      subject: `task:${d.task}`,
      kind: "drill",
      to: d.status,
      cause,
      detail: { drill: id, ...detail, rtoMs: d.rtoMs, rpoMs: d.rpoMs },
    });
    if (d.status === "failed") {
      this.d.alarm?.({
        kind: "drill-failed",
        severity: "critical",
        subject: `task:${d.task}`,
        summary: cause,
        detail: {
          drill: id,
          task: d.task,
          site: d.site,
          rtoMs: d.rtoMs,
          rpoMs: d.rpoMs,
          reasons: d.reasons,
          targets: d.targets,
        },
      });
    }
    return d;
  }

  private async insert(
    v: Partial<typeof drills.$inferInsert> & { task: string; status: DrillStatus; requestedBy: string },
  ): Promise<number> {
    return await serialized(this.d.db, async () => {
      const [r] = await this.d.db.insert(drills).values({ detail: "{}", createdAt: Date.now(), ...v })
        .returning({ id: drills.id });
      return r.id;
    });
  }
}
