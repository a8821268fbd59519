// The task inventory in libsql (drizzle): sites, hosts, volumes (partitions) and tasks, with
// the referential checks SQLite's foreign keys would need a per-connection pragma for: nothing
// in use can be deleted or moved, a task only refers to what exists. Each check and its write
// run in one serialized() step, so two requests of this process cannot interleave between them.
import { eq, inArray } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { hosts, partitions, sites, tasks } from "../db/schema.ts";
import {
  DEFAULT_DEVICE_PREFIXES,
  describeIssues,
  deviceAllowed,
  EDITABLE_STATES,
  type Group,
  groupPartitions,
  type Host,
  type Issue,
  type Mirror,
  type Recovery,
  type Site,
  type Targets,
  type Task,
  type TaskEvent,
  type TaskFailure,
  type TaskInput,
  type TaskState,
  transition,
  validateTask,
  type Volume,
} from "./model.ts";
import { type Observation, planDiscovery, type Table } from "./discovery-plan.ts";

/** A refusal with the HTTP status it maps to and, for validation, the fields at fault. */
export class StoreError extends Error {
  constructor(message: string, readonly status: 400 | 404 | 409, readonly issues: Issue[] = []) {
    super(message);
    this.name = "StoreError";
  }
}

export interface TaskChange {
  task: Task;
  from: TaskState;
  to: TaskState;
  event: TaskEvent;
  cause: string;
}

type SiteRow = typeof sites.$inferSelect;
type HostRow = typeof hosts.$inferSelect;
type PartitionRow = typeof partitions.$inferSelect;
type TaskRow = typeof tasks.$inferSelect;

/** Found by the gateway itself (see discovery.ts), and when it was last seen (null: never). */
export interface Discovered {
  discovered: boolean;
  lastSeen: number | null;
}
export type StoredSite = Site & Discovered & { createdAt: number; updatedAt: number };
export type StoredHost = Host & Discovered & { createdAt: number; updatedAt: number };
export type StoredVolume = Volume & Discovered & { createdAt: number; updatedAt: number };

function discoveredOf(r: { discovered: number; lastSeen: number | null }): Discovered {
  return { discovered: r.discovered === 1, lastSeen: r.lastSeen };
}

function siteOf(r: SiteRow): StoredSite {
  return {
    name: r.name,
    role: r.role as Site["role"],
    description: r.description,
    ...discoveredOf(r),
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
  };
}

function hostOf(r: HostRow): StoredHost {
  return {
    name: r.name,
    site: r.site,
    role: r.role as Host["role"],
    ...(r.address ? { address: r.address } : {}),
    ...(r.agent ? { agent: r.agent } : {}),
    ...discoveredOf(r),
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
  };
}

function volumeOf(r: PartitionRow): StoredVolume {
  return {
    name: r.name,
    host: r.host,
    device: r.device,
    size: r.size,
    ...discoveredOf(r),
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
  };
}

function taskOf(r: TaskRow): Task {
  return {
    name: r.name,
    description: r.description,
    group: JSON.parse(r.groupJson) as Group,
    mirror: JSON.parse(r.mirrorJson) as Mirror,
    recovery: JSON.parse(r.recoveryJson) as Recovery,
    ...(r.service ? { service: r.service } : {}),
    ...(r.failureJson ? { failure: JSON.parse(r.failureJson) as TaskFailure } : {}),
    ...(r.targetsJson ? { targets: JSON.parse(r.targetsJson) as Targets } : {}),
    state: r.state as TaskState,
    stateSince: r.stateSince,
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
  };
}

/** The directory of a path, with its trailing slash (what --device-prefix takes). */
function parentDir(path: string): string {
  return path.slice(0, path.lastIndexOf("/") + 1) || "/";
}

export class TaskStore {
  /** Called after every task state change (the web server publishes it as an event). */
  onChange?: (c: TaskChange) => void;
  /** Called when a task's failure is recorded or cleared (the web server publishes it as an event). */
  onFailure?: (task: string, failure: TaskFailure | undefined, before: TaskFailure | undefined) => void;

  /**
   * `devicePrefixes`: the directories volumes' devices must lie in (the allowed device list);
   * a path outside them is refused, whatever the host.
   */
  constructor(
    private readonly db: Db,
    readonly devicePrefixes: readonly string[] = DEFAULT_DEVICE_PREFIXES,
    private readonly clock: () => number = Date.now,
  ) {}

  private write<T>(fn: () => Promise<T>): Promise<T> {
    return serialized(this.db, fn);
  }

  // ------------------------------------------------------------------ sites

  async listSites(): Promise<StoredSite[]> {
    return (await this.db.select().from(sites).orderBy(sites.name)).map(siteOf);
  }

  async getSite(name: string): Promise<StoredSite> {
    const [r] = await this.db.select().from(sites).where(eq(sites.name, name));
    if (!r) throw new StoreError(`no site "${name}"`, 404);
    return siteOf(r);
  }

  createSite(s: Site): Promise<StoredSite> {
    return this.write(async () => {
      if ((await this.db.select().from(sites).where(eq(sites.name, s.name))).length) {
        throw new StoreError(`site "${s.name}" exists already`, 409, [{ path: "name", message: "is taken" }]);
      }
      const now = this.clock();
      await this.db.insert(sites).values({ ...s, createdAt: now, updatedAt: now });
      return this.getSite(s.name);
    });
  }

  updateSite(s: Site): Promise<StoredSite> {
    return this.write(async () => {
      const old = await this.getSite(s.name);
      if (old.role !== s.role) {
        const users = (await this.allTasks()).filter((t) =>
          t.group.local.site === s.name || t.group.remotes.some((r) => r.site === s.name)
        );
        if (users.length) {
          throw new StoreError(
            `site "${s.name}" cannot change its role: task(s) ${
              users.map((t) => `"${t.name}"`).join(", ")
            } use it`,
            409,
          );
        }
      }
      await this.db.update(sites).set({ role: s.role, description: s.description, updatedAt: this.clock() })
        .where(eq(sites.name, s.name));
      return this.getSite(s.name);
    });
  }

  deleteSite(name: string): Promise<void> {
    return this.write(async () => {
      await this.getSite(name);
      const onIt = await this.db.select().from(hosts).where(eq(hosts.site, name));
      if (onIt.length) {
        throw new StoreError(
          `site "${name}" still has host(s) ${
            onIt.map((h) => `"${h.name}"`).join(", ")
          }: delete or move them first`,
          409,
        );
      }
      const users = (await this.allTasks()).filter((t) =>
        t.group.local.site === name || t.group.remotes.some((r) => r.site === name)
      );
      if (users.length) {
        throw new StoreError(
          `site "${name}" is used by task(s) ${users.map((t) => `"${t.name}"`).join(", ")}`,
          409,
        );
      }
      await this.db.delete(sites).where(eq(sites.name, name));
    });
  }

  // ------------------------------------------------------------------ hosts

  async listHosts(): Promise<StoredHost[]> {
    return (await this.db.select().from(hosts).orderBy(hosts.name)).map(hostOf);
  }

  async getHost(name: string): Promise<StoredHost> {
    const [r] = await this.db.select().from(hosts).where(eq(hosts.name, name));
    if (!r) throw new StoreError(`no host "${name}"`, 404);
    return hostOf(r);
  }

  private async needSite(name: string): Promise<void> {
    if (!(await this.db.select().from(sites).where(eq(sites.name, name))).length) {
      throw new StoreError(`site: unknown site "${name}"`, 400, [{
        path: "site",
        message: `unknown site "${name}"`,
      }]);
    }
  }

  private async tasksUsingHost(name: string): Promise<Task[]> {
    return (await this.allTasks()).filter((t) => groupPartitions(t.group).some((p) => p.ref.host === name));
  }

  createHost(h: Host): Promise<StoredHost> {
    return this.write(async () => {
      if ((await this.db.select().from(hosts).where(eq(hosts.name, h.name))).length) {
        throw new StoreError(`host "${h.name}" exists already`, 409, [{ path: "name", message: "is taken" }]);
      }
      await this.needSite(h.site);
      const now = this.clock();
      await this.db.insert(hosts).values({
        name: h.name,
        site: h.site,
        role: h.role,
        address: h.address ?? null,
        agent: h.agent ?? null,
        createdAt: now,
        updatedAt: now,
      });
      return this.getHost(h.name);
    });
  }

  updateHost(h: Host): Promise<StoredHost> {
    return this.write(async () => {
      const old = await this.getHost(h.name);
      await this.needSite(h.site);
      if (old.site !== h.site || old.role !== h.role) {
        const users = await this.tasksUsingHost(h.name);
        if (users.length) {
          throw new StoreError(
            `host "${h.name}" cannot change its site or role: task(s) ${
              users.map((t) => `"${t.name}"`).join(", ")
            } use it`,
            409,
          );
        }
      }
      await this.db.update(hosts).set({
        site: h.site,
        role: h.role,
        address: h.address ?? null,
        agent: h.agent ?? null,
        updatedAt: this.clock(),
      }).where(eq(hosts.name, h.name));
      return this.getHost(h.name);
    });
  }

  deleteHost(name: string): Promise<void> {
    return this.write(async () => {
      await this.getHost(name);
      const users = await this.tasksUsingHost(name);
      if (users.length) {
        throw new StoreError(
          `host "${name}" is used by task(s) ${users.map((t) => `"${t.name}"`).join(", ")}`,
          409,
        );
      }
      const vols = await this.db.select().from(partitions).where(eq(partitions.host, name));
      if (vols.length) {
        throw new StoreError(
          `host "${name}" still has volume(s) ${
            vols.map((v) => `"${v.name}"`).join(", ")
          }: delete them first`,
          409,
        );
      }
      await this.db.delete(hosts).where(eq(hosts.name, name));
    });
  }

  // ------------------------------------------------------------------ volumes (partitions)

  async listVolumes(): Promise<StoredVolume[]> {
    return (await this.db.select().from(partitions).orderBy(partitions.name)).map(volumeOf);
  }

  async getVolume(name: string): Promise<StoredVolume> {
    const [r] = await this.db.select().from(partitions).where(eq(partitions.name, name));
    if (!r) throw new StoreError(`no volume "${name}"`, 404);
    return volumeOf(r);
  }

  private async tasksUsingVolume(v: { host: string; device: string }): Promise<Task[]> {
    return (await this.allTasks()).filter((t) =>
      groupPartitions(t.group).some((p) => p.ref.host === v.host && p.ref.device === v.device)
    );
  }

  private async checkVolume(v: Volume): Promise<void> {
    // a discovered device was reported by its agent, which may serve it (its --device-prefix)
    const discovered = (await this.db.select().from(partitions).where(eq(partitions.host, v.host)))
      .some((r) => r.device === v.device && r.discovered === 1);
    if (!discovered && !deviceAllowed(v.device, this.devicePrefixes)) {
      const allowed = this.devicePrefixes.join(", ");
      const message = `${v.device} is outside the allowed device list (${allowed}): start the local ` +
        `gateway with --device-prefix ${parentDir(v.device)} to allow that directory, or the host's ` +
        "agent with --device-prefix for it: its devices then appear here by themselves";
      throw new StoreError(`device: ${message}`, 400, [{ path: "device", message }]);
    }
    if (!(await this.db.select().from(hosts).where(eq(hosts.name, v.host))).length) {
      throw new StoreError(`host: unknown host "${v.host}"`, 400, [{
        path: "host",
        message: `unknown host "${v.host}"`,
      }]);
    }
    const same = (await this.db.select().from(partitions).where(eq(partitions.host, v.host)))
      .find((r) => r.device === v.device && r.name !== v.name);
    if (same) {
      throw new StoreError(`device: ${v.host}:${v.device} is already volume "${same.name}"`, 409, [
        { path: "device", message: `${v.host}:${v.device} is already volume "${same.name}"` },
      ]);
    }
  }

  createVolume(v: Volume): Promise<StoredVolume> {
    return this.write(async () => {
      if ((await this.db.select().from(partitions).where(eq(partitions.name, v.name))).length) {
        throw new StoreError(`volume "${v.name}" exists already`, 409, [{
          path: "name",
          message: "is taken",
        }]);
      }
      await this.checkVolume(v);
      const now = this.clock();
      await this.db.insert(partitions).values({ ...v, createdAt: now, updatedAt: now });
      return this.getVolume(v.name);
    });
  }

  updateVolume(v: Volume): Promise<StoredVolume> {
    return this.write(async () => {
      const old = await this.getVolume(v.name);
      await this.checkVolume(v);
      if (old.host !== v.host || old.device !== v.device || old.size !== v.size) {
        const users = await this.tasksUsingVolume(old);
        if (users.length) {
          throw new StoreError(
            `volume "${v.name}" cannot change host, device or size: task(s) ${
              users.map((t) => `"${t.name}"`).join(", ")
            } use it`,
            409,
          );
        }
      }
      await this.db.update(partitions).set({
        host: v.host,
        device: v.device,
        size: v.size,
        updatedAt: this.clock(),
      })
        .where(eq(partitions.name, v.name));
      return this.getVolume(v.name);
    });
  }

  deleteVolume(name: string): Promise<void> {
    return this.write(async () => {
      const v = await this.getVolume(name);
      const users = await this.tasksUsingVolume(v);
      if (users.length) {
        throw new StoreError(
          `volume "${name}" is used by task(s) ${users.map((t) => `"${t.name}"`).join(", ")}`,
          409,
        );
      }
      await this.db.delete(partitions).where(eq(partitions.name, name));
    });
  }

  // ------------------------------------------------------------------ tasks

  private async allTasks(): Promise<Task[]> {
    return (await this.db.select().from(tasks).orderBy(tasks.name)).map(taskOf);
  }

  listTasks(): Promise<Task[]> {
    return this.allTasks();
  }

  async getTask(name: string): Promise<Task> {
    const [r] = await this.db.select().from(tasks).where(eq(tasks.name, name));
    if (!r) throw new StoreError(`no task "${name}"`, 404);
    return taskOf(r);
  }

  /** The problems of a task against the inventory, `adopt` counted as registered. */
  async issues(t: TaskInput, adopt: Volume[] = []): Promise<Issue[]> {
    return validateTask(t, {
      sites: await this.listSites(),
      hosts: await this.listHosts(),
      volumes: [...await this.listVolumes(), ...adopt],
      tasks: await this.allTasks(),
    });
  }

  private async check(t: TaskInput, adopt: Volume[]): Promise<void> {
    const issues = await this.issues(t, adopt);
    if (issues.length) throw new StoreError(describeIssues(issues), 400, issues);
  }

  /** Registers the gateway's own partitions a group adopts (discovered, seen now). */
  private async adoptVolumes(adopt: Volume[]): Promise<void> {
    const now = this.clock();
    for (const v of adopt) {
      await this.db.insert(partitions).values({
        ...v,
        discovered: 1,
        lastSeen: now,
        createdAt: now,
        updatedAt: now,
      });
    }
  }

  /**
   * Creates a task; `adopt` are volumes its group names that are not registered yet (the
   * gateways' mirror and replicas proposed for it, see proposal.ts): registered with it.
   */
  createTask(t: TaskInput, adopt: Volume[] = []): Promise<Task> {
    return this.write(async () => {
      if ((await this.db.select().from(tasks).where(eq(tasks.name, t.name))).length) {
        throw new StoreError(`task "${t.name}" exists already`, 409, [{ path: "name", message: "is taken" }]);
      }
      await this.check(t, adopt);
      await this.adoptVolumes(adopt);
      const now = this.clock();
      await this.db.insert(tasks).values({
        name: t.name,
        description: t.description,
        groupJson: JSON.stringify(t.group),
        mirrorJson: JSON.stringify(t.mirror),
        recoveryJson: JSON.stringify(t.recovery),
        service: t.service ?? null,
        targetsJson: t.targets ? JSON.stringify(t.targets) : null,
        state: "configured",
        stateSince: now,
        createdAt: now,
        updatedAt: now,
      });
      return this.getTask(t.name);
    });
  }

  /** Replaces G, M, R of a task; the group only while nothing runs (configured or paused). */
  updateTask(t: TaskInput, adopt: Volume[] = []): Promise<Task> {
    return this.write(async () => {
      const old = await this.getTask(t.name);
      if (JSON.stringify(old.group) !== JSON.stringify(t.group) && !EDITABLE_STATES.includes(old.state)) {
        throw new StoreError(
          `the group of task "${t.name}" cannot change while it is ${old.state}: pause it first (allowed in ${
            EDITABLE_STATES.join(", ")
          })`,
          409,
        );
      }
      await this.check(t, adopt);
      await this.adoptVolumes(adopt);
      await this.db.update(tasks).set({
        description: t.description,
        groupJson: JSON.stringify(t.group),
        mirrorJson: JSON.stringify(t.mirror),
        recoveryJson: JSON.stringify(t.recovery),
        service: t.service ?? null,
        targetsJson: t.targets ? JSON.stringify(t.targets) : null,
        updatedAt: this.clock(),
      }).where(eq(tasks.name, t.name));
      return this.getTask(t.name);
    });
  }

  deleteTask(name: string): Promise<void> {
    return this.write(async () => {
      const t = await this.getTask(name);
      if (!EDITABLE_STATES.includes(t.state)) {
        throw new StoreError(
          `task "${name}" is ${t.state}: only a task that is ${EDITABLE_STATES.join(" or ")} can be deleted`,
          409,
        );
      }
      await this.db.delete(tasks).where(eq(tasks.name, name));
    });
  }

  /** Records (or with undefined clears) why the task's last start or resume failed. */
  setFailure(name: string, failure: TaskFailure | undefined): Promise<void> {
    return this.write(async () => {
      const before = await this.getTask(name);
      if (!before.failure && !failure) return;
      await this.db.update(tasks).set({ failureJson: failure ? JSON.stringify(failure) : null })
        .where(eq(tasks.name, name));
      try {
        this.onFailure?.(name, failure, before.failure);
      } catch { /* a listener's problem is not the store's */ }
    });
  }

  /**
   * Brings what the gateway observed into the inventory (planDiscovery): creates what is new,
   * marked discovered, and marks what exists discovered and, when seen, seen now. Returns
   * what could not be matched.
   */
  applyDiscovery(obs: Observation): Promise<string[]> {
    return this.write(async () => {
      const plan = planDiscovery({
        sites: await this.listSites(),
        hosts: await this.listHosts(),
        volumes: await this.listVolumes(),
        tasks: await this.allTasks(),
      }, obs);
      const now = this.clock();
      const made = { discovered: 1, lastSeen: null, createdAt: now, updatedAt: now };
      for (const x of plan.sites) await this.db.insert(sites).values({ ...x, ...made });
      for (const x of plan.hosts) await this.db.insert(hosts).values({ ...x, ...made });
      for (const x of plan.volumes) await this.db.insert(partitions).values({ ...x, ...made });
      for (const r of plan.resize) {
        await this.db.update(partitions).set({ size: r.size, updatedAt: now }).where(
          eq(partitions.name, r.name),
        );
      }
      const tables = { sites, hosts, partitions };
      for (const table of Object.keys(tables) as Table[]) {
        const t = tables[table];
        for (const seen of [true, false]) {
          const names = plan.touch.filter((x) => x.table === table && x.seen === seen).map((x) => x.name);
          if (!names.length) continue;
          await this.db.update(t).set(seen ? { discovered: 1, lastSeen: now } : { discovered: 1 })
            .where(inArray(t.name, names));
        }
      }
      return plan.conflicts;
    });
  }

  /**
   * Moves a task through the state machine: the control plane calls this with its events
   * (synced, degrade, recovered, …), the API with the operator's. `expect` guards against a
   * change in between (the state the caller saw).
   */
  applyEvent(name: string, event: TaskEvent, cause: string, expect?: TaskState): Promise<TaskChange> {
    return this.write(async () => {
      const task = await this.getTask(name);
      if (expect && task.state !== expect) {
        throw new StoreError(`task "${name}" changed meanwhile: it is ${task.state} now, not ${expect}`, 409);
      }
      const to = transition(task.state, event);
      const now = this.clock();
      await this.db.update(tasks).set({ state: to, stateSince: now, updatedAt: now }).where(
        eq(tasks.name, name),
      );
      const change: TaskChange = {
        task: { ...task, state: to, stateSince: now, updatedAt: now },
        from: task.state,
        to,
        event,
        cause,
      };
      try {
        this.onChange?.(change);
      } catch { /* a listener's problem is not the transition's */ }
      return change;
    });
  }
}
