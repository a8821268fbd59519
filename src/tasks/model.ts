// The protection task model (pure: no I/O). A task is T = (G, M, R, S):
//   G  the group: the local center's LSP (the application server's partition), LGP (the local
//      gateway's mirror) and buffer (its journal), and one or more remote centers, each with an
//      RGP (the remote gateway's replica) and an RSP (the standby server's partition);
//   M  the mirror strategy: acknowledgement point, congestion policy, buffer bound, bandwidth
//      limit, compression;
//   R  the recovery strategy: full, fast or scheduled, chosen by the operator (manual) or by the
//      policy;
//   S  the state, moved only by the transitions of the state machine below.
// Sites (centers), hosts and volumes (partitions: host + device + size) are the inventory a
// group is made of. The schemas check each object alone; validateTask checks a task against the
// inventory (known hosts, the right sites, equal sizes, partitions not shared).
import { NAME_HINT, NAME_PATTERN, NAME_RE } from "../names.ts";
import { z } from "zod";
import { underPrefix } from "../capture/devices.ts";

/** A zod error message: "is required" when the field is missing, else "must be WHAT". */
export function must(what: string) {
  return (issue: { input?: unknown }) => issue.input === undefined ? "is required" : `must be ${what}`;
}

export const nameSchema = z.string({ error: must("a string") }).regex(NAME_RE, NAME_HINT);

/** An absolute device or file path without `..` segments or control characters. */
export const devicePathSchema = z.string({ error: must("a string") })
  .max(4096, "must be at most 4096 characters")
  .refine((p) => p.startsWith("/"), "must be an absolute path (start with /)")
  .refine((p) => !p.split("/").includes(".."), "must not contain a '..' segment")
  .refine(
    (p) => !p.split("/").slice(1).some((x) => x === "." || x === ""),
    "must be normalised (no '.' or empty segment)",
  )
  // deno-lint-ignore no-control-regex
  .refine((p) => !/[\x00-\x1f\x7f]/.test(p), "must not contain control characters");

/** The device prefixes volumes may use unless the gateway is told otherwise (--device-prefix). */
export const DEFAULT_DEVICE_PREFIXES: readonly string[] = ["/dev/"];

/** Whether a (schema-valid, normalised) device path lies under one of the prefixes (directories). */
export const deviceAllowed = underPrefix;

/**
 * A count of bytes (or bytes per second), one message per problem: "is too large" for what no
 * disk holds, then "must be a whole number of …", the lower bound, and the multiple.
 */
export function bytesSchema(o: { unit?: string; min?: 0 | 1; multipleOf?: number } = {}) {
  const unit = o.unit ?? "bytes";
  return z.number({ error: must(`a number of ${unit}`) }).superRefine((n, ctx) => {
    const fail = (message: string) => ctx.addIssue({ code: "custom", message });
    if (n > Number.MAX_SAFE_INTEGER) fail(`is too large (at most ${formatBytes(Number.MAX_SAFE_INTEGER)})`);
    else if (!Number.isInteger(n)) fail(`must be a whole number of ${unit}`);
    else if ((o.min ?? 1) === 1 && n <= 0) fail(`must be more than 0 ${unit}`);
    else if (n < 0) fail("must not be negative");
    else if (o.multipleOf && n % o.multipleOf !== 0) fail(`must be a multiple of ${o.multipleOf} bytes`);
  });
}

const description = z.string({ error: must("a string") }).max(500, "must be at most 500 characters");

// ------------------------------------------------------------------------------ inventory

export const siteSchema = z.object({
  name: nameSchema,
  /** local: a production center (its application servers and local gateway); remote: a recovery center. */
  role: z.enum(["local", "remote"], { error: must('"local" or "remote"') }),
  description: description.default(""),
}).strict();
export type Site = z.infer<typeof siteSchema>;

export const hostSchema = z.object({
  name: nameSchema,
  site: nameSchema,
  /** application: runs an agent (LSP, or RSP at a remote center); gateway: a local or remote gateway. */
  role: z.enum(["application", "gateway"], { error: must('"application" or "gateway"') }),
  /** How to reach it (host name or IP address), informational. */
  address: z.string({ error: must("a string") }).regex(
    /^[A-Za-z0-9.:_-]{1,253}$/,
    "must be a host name or an IP address",
  ).optional(),
  /** The agent id this host runs (application hosts; default: the host's name). */
  agent: nameSchema.optional(),
}).strict();
export type Host = z.infer<typeof hostSchema>;

export const SECTOR = 512;

export const volumeSchema = z.object({
  name: nameSchema,
  host: nameSchema,
  device: devicePathSchema,
  /** Size in bytes, a multiple of 512. */
  size: bytesSchema({ multipleOf: SECTOR }),
}).strict();
export type Volume = z.infer<typeof volumeSchema>;

// ------------------------------------------------------------------------------ the task

export const partitionRefSchema = z.object({ host: nameSchema, device: devicePathSchema }).strict();
export type PartitionRef = z.infer<typeof partitionRefSchema>;

export const groupSchema = z.object({
  local: z.object({
    site: nameSchema,
    lsp: partitionRefSchema,
    lgp: partitionRefSchema,
    buffer: partitionRefSchema,
  }).strict(),
  remotes: z.array(
    z.object({ site: nameSchema, rgp: partitionRefSchema, rsp: partitionRefSchema }).strict(),
    { error: must("a list of remote centers") },
  ).min(1, "needs at least one remote center").max(8, "at most 8 remote centers"),
}).strict();
export type Group = z.infer<typeof groupSchema>;

export const mirrorSchema = z.object({
  /**
   * Where a write counts as acknowledged: lgp (durable in the local gateway's journal; remote
   * centers are asynchronous), rgp (also durable at every remote gateway), rsp (also applied by
   * every standby server).
   */
  ackPoint: z.enum(["lgp", "rgp", "rsp"], { error: must('"lgp", "rgp" or "rsp"') }).default("lgp"),
  /** A remote center that fills the buffer: block the writers, or pull ahead (track, copy later). */
  congestion: z.enum(["block", "pull-ahead"], { error: must('"block" or "pull-ahead"') }).default("block"),
  /** Most bytes of the buffer partition the journal may use (default: all of it). */
  bufferBound: bytesSchema().optional(),
  /** Most bytes per second to each remote center; 0: no limit. */
  bandwidthLimit: bytesSchema({ unit: "bytes per second", min: 0 }).default(0),
  compression: z.boolean({ error: must("true or false") }).default(false),
  /** Remote centers keep every recovery point of the volume this many hours (absent: their --retention). */
  retentionHours: z.number({ error: must("a number of hours") }).gt(0, "must be more than 0")
    .max(8760, "must be at most 8760 hours (a year)").optional(),
  /** The space bound of the volume's retention at each remote center (absent: its --retention-size). */
  retentionBytes: bytesSchema().optional(),
}).strict();
export type Mirror = z.infer<typeof mirrorSchema>;

export const SOURCE_RE = new RegExp(`^(lgp|(rgp|rsp)@${NAME_PATTERN})$`);

/** A point a site holds, as requests name it: a sequence number or a checkpoint's name. */
export const heldPointSchema = z.union([
  z.number().int("must be a whole number").nonnegative("must not be negative"),
  z.string().regex(NAME_RE, "must be a sequence number or a checkpoint name"),
]);
const sourceSchema = z.string({ error: must("a string") }).regex(SOURCE_RE, "use lgp, rgp@SITE or rsp@SITE");

export const recoverySchema = z.object({
  /** full: copy everything; fast: copy only the chunks that differ; scheduled: at `schedule.time`. */
  strategy: z.enum(["full", "fast", "scheduled"], { error: must('"full", "fast" or "scheduled"') })
    .default("fast"),
  /** manual: the operator picks the source; policy: the candidate of lowest cost that is valid. */
  mode: z.enum(["manual", "policy"], { error: must('"manual" or "policy"') }).default("policy"),
  /** The default source in manual mode. */
  source: sourceSchema.optional(),
  schedule: z.object({
    /** Daily time of day (the gateway's local time), HH:MM. */
    time: z.string({ error: must("a string") }).regex(/^([01]\d|2[0-3]):[0-5]\d$/, "must be HH:MM (24 h)"),
    method: z.enum(["full", "fast"], { error: must('"full" or "fast"') }).default("fast"),
  }).strict().optional(),
}).strict().superRefine((r, ctx) => {
  if (r.strategy === "scheduled" && !r.schedule) {
    ctx.addIssue({
      code: "custom",
      path: ["schedule"],
      message: "is required when the strategy is scheduled",
    });
  }
  if (r.strategy !== "scheduled" && r.schedule) {
    ctx.addIssue({
      code: "custom",
      path: ["schedule"],
      message: "is only allowed when the strategy is scheduled",
    });
  }
});
export type Recovery = z.infer<typeof recoverySchema>;

// ------------------------------------------------------------------------------ targets

const positiveMs = (most: number, what: string) =>
  z.number({ error: must("a number of milliseconds") }).positive("must be more than 0 ms")
    .max(most, `must be at most ${what}`);

/**
 * What the task promises, in milliseconds. Detection (all three or none): a failed server is
 * detected within detectionMs (T_D^U), a live one is falsely detected on average at most once every
 * mistakeRecurrenceMs (T_MR^L), for at most mistakeDurationMs on average (T_M^U); the local gateway
 * derives its failure detector's settings for the task's agent from them. rtoMs and rpoMs: how long
 * bringing the service up at a remote center may take, and how much recent writing it may lack;
 * failover drills are graded against them.
 */
export const targetsSchema = z.object({
  detection: z.object({
    detectionMs: positiveMs(3_600_000, "one hour"),
    mistakeRecurrenceMs: positiveMs(10 * 365 * 86_400_000, "ten years"),
    mistakeDurationMs: positiveMs(3_600_000, "one hour"),
  }).strict().refine(
    (d) => d.mistakeDurationMs < d.mistakeRecurrenceMs,
    { message: "mistakeDurationMs must be less than mistakeRecurrenceMs", path: ["mistakeDurationMs"] },
  ).optional(),
  rtoMs: positiveMs(7 * 86_400_000, "one week").optional(),
  rpoMs: z.number({ error: must("a number of milliseconds") }).nonnegative("must not be negative")
    .max(7 * 86_400_000, "must be at most one week").optional(),
}).strict();
export type Targets = z.infer<typeof targetsSchema>;

/** The body that creates (or replaces) a task: G, M, R. S is the server's. */
export const taskInputSchema = z.object({
  name: nameSchema,
  description: description.default(""),
  group: groupSchema,
  mirror: mirrorSchema.default({
    ackPoint: "lgp",
    congestion: "block",
    bandwidthLimit: 0,
    compression: false,
  }),
  recovery: recoverySchema.default({ strategy: "fast", mode: "policy" }),
  /** A protected service of the local gateway (--service NAME) switched by this task's failover. */
  service: nameSchema.optional(),
  /** QoS targets (detection, RTO, RPO), optional. */
  targets: targetsSchema.optional(),
}).strict();
export type TaskInput = z.infer<typeof taskInputSchema>;

/** Why a task's last start or resume failed, kept until one succeeds. */
export interface TaskFailure {
  action: string;
  reason: string;
  at: number;
}

export interface Task extends TaskInput {
  /** The last start or resume that failed (kept until one succeeds). */
  failure?: TaskFailure;
  state: TaskState;
  stateSince: number;
  createdAt: number;
  updatedAt: number;
}

// ------------------------------------------------------------------------------ state machine

export const TASK_STATES = [
  "configured",
  "syncing",
  "protected",
  "degraded",
  "paused",
  "testing",
  "failed-over",
  "failing-back",
  "recovering",
] as const;
export type TaskState = typeof TASK_STATES[number];

export const TASK_EVENTS = [
  "start",
  "synced",
  "degrade",
  "resync",
  "pause",
  "resume",
  "failover-test",
  "test-done",
  "failover",
  "failback",
  "failed-back",
  "failback-failed",
  "recover",
  "recovered",
  "recovery-failed",
] as const;
export type TaskEvent = typeof TASK_EVENTS[number];

/**
 * The allowed transitions: state → event → next state. Events from the operator: start, pause,
 * resume, failover-test, test-done (end the test), failover, failback, recover. Events from the
 * control plane: synced, degrade, resync, failed-back, failback-failed, recovered, recovery-failed
 * (and failover, when the detectors decide).
 */
export const TRANSITIONS: Readonly<Record<TaskState, Readonly<Partial<Record<TaskEvent, TaskState>>>>> = {
  // G, M and R are set; nothing runs yet
  configured: { start: "syncing" },
  // the copies are brought level by the differential synchronisation
  syncing: { synced: "protected", degrade: "degraded", pause: "paused" },
  // every copy consistent and following the stream
  protected: {
    degrade: "degraded",
    pause: "paused",
    "failover-test": "testing",
    failover: "failed-over",
    recover: "recovering",
  },
  // a remote center is behind, unreachable or pulled ahead: its copy is old but consistent
  degraded: {
    synced: "protected",
    resync: "syncing",
    pause: "paused",
    failover: "failed-over",
    recover: "recovering",
  },
  // replication stopped by the operator; the remote copies stay consistent (older)
  paused: { resume: "syncing", failover: "failed-over", recover: "recovering" },
  // a failover test: a remote copy is brought up beside the running service, then discarded
  testing: { "test-done": "protected", failover: "failed-over" },
  // the service runs at a remote center
  "failed-over": { failback: "failing-back" },
  // the local copies are rebuilt from the remote center that served, then the service returns
  "failing-back": { "failed-back": "syncing", "failback-failed": "failed-over" },
  // a local copy (LSP or LGP) is being rebuilt from a source while the service stays local
  recovering: { recovered: "syncing", "recovery-failed": "degraded" },
};

/** Events allowed in a state. */
export function allowedEvents(state: TaskState): TaskEvent[] {
  return Object.keys(TRANSITIONS[state] ?? {}) as TaskEvent[];
}

export class TransitionError extends Error {
  constructor(readonly state: string, readonly event: string, readonly allowed: string[]) {
    super(
      `a task in state "${state}" does not accept "${event}"; allowed in "${state}": ${
        allowed.length ? allowed.join(", ") : "nothing"
      }`,
    );
    this.name = "TransitionError";
  }
}

/** The state after `event` in `state`; throws a TransitionError naming both and the allowed events. */
export function transition(state: TaskState, event: TaskEvent): TaskState {
  if (!(TASK_STATES as readonly string[]).includes(state)) {
    throw new TransitionError(state, event, []);
  }
  const next = TRANSITIONS[state][event];
  if (!next) throw new TransitionError(state, event, allowedEvents(state));
  return next;
}

/** States in which the group (G) may change and the task may be deleted: nothing is running. */
export const EDITABLE_STATES: readonly TaskState[] = ["configured", "paused"];

// ------------------------------------------------------------------------------ validation

export interface Issue {
  /** Dotted path of the field, e.g. group.remotes.0.rgp.host */
  path: string;
  message: string;
}

/** The inventory a task is checked against. */
export interface Inventory {
  sites: Site[];
  hosts: Host[];
  volumes: Volume[];
  /** Other tasks (their partitions cannot be shared). */
  tasks: { name: string; group: Group }[];
}

/** Every partition of a group with its place in the group (`group.local.lsp`, …). */
export function groupPartitions(g: Group): { path: string; role: string; site: string; ref: PartitionRef }[] {
  const out = [
    { path: "group.local.lsp", role: "lsp", site: g.local.site, ref: g.local.lsp },
    { path: "group.local.lgp", role: "lgp", site: g.local.site, ref: g.local.lgp },
    { path: "group.local.buffer", role: "buffer", site: g.local.site, ref: g.local.buffer },
  ];
  g.remotes.forEach((r, i) => {
    out.push({ path: `group.remotes.${i}.rgp`, role: "rgp", site: r.site, ref: r.rgp });
    out.push({ path: `group.remotes.${i}.rsp`, role: "rsp", site: r.site, ref: r.rsp });
  });
  return out;
}

const ROLE_HOST: Record<string, Host["role"]> = {
  lsp: "application",
  lgp: "gateway",
  buffer: "gateway",
  rgp: "gateway",
  rsp: "application",
};

export function sameRef(a: PartitionRef, b: PartitionRef): boolean {
  return a.host === b.host && a.device === b.device;
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

/**
 * Checks a (schema-valid) task against the inventory: one local center and remote centers that
 * exist and differ, every host known and at the center its partition belongs to, with the right
 * role, every partition registered as a volume, the data partitions (LSP, LGP, RGPs, RSPs) all of
 * the same size, the buffer at least the buffer bound, no partition twice in the group or in
 * another task (except the buffer, the gateway's journal: tasks share it, each bounded by its
 * buffer bound). Returns the problems, empty when there are none.
 */
export function validateTask(t: TaskInput, inv: Inventory): Issue[] {
  const issues: Issue[] = [];
  const sites = new Map(inv.sites.map((s) => [s.name, s]));
  const hosts = new Map(inv.hosts.map((h) => [h.name, h]));
  const g = t.group;

  const local = sites.get(g.local.site);
  if (!local) issues.push({ path: "group.local.site", message: `unknown site "${g.local.site}"` });
  else if (local.role !== "local") {
    issues.push({
      path: "group.local.site",
      message: `site "${local.name}" is a remote center, not a local one`,
    });
  }
  const seenSites = new Set<string>();
  g.remotes.forEach((r, i) => {
    const path = `group.remotes.${i}.site`;
    const s = sites.get(r.site);
    if (!s) issues.push({ path, message: `unknown site "${r.site}"` });
    else if (s.role !== "remote") {
      issues.push({ path, message: `site "${r.site}" is a local center, not a remote one` });
    }
    if (r.site === g.local.site) {
      issues.push({ path, message: "a remote center must differ from the local center" });
    }
    if (seenSites.has(r.site)) issues.push({ path, message: `site "${r.site}" is listed twice` });
    seenSites.add(r.site);
  });

  const parts = groupPartitions(g);
  const sized: { path: string; role: string; size: number }[] = [];
  let bufferSize: number | undefined;
  parts.forEach((p, i) => {
    const host = hosts.get(p.ref.host);
    if (!host) {
      issues.push({ path: `${p.path}.host`, message: `unknown host "${p.ref.host}"` });
      return;
    }
    if (host.site !== p.site) {
      issues.push({
        path: `${p.path}.host`,
        message: `host "${host.name}" is at site "${host.site}", not at "${p.site}"`,
      });
    }
    const wantRole = ROLE_HOST[p.role];
    if (host.role !== wantRole) {
      issues.push({
        path: `${p.path}.host`,
        message:
          `the ${p.role.toUpperCase()} must be on a ${wantRole} host; "${host.name}" is a ${host.role} host`,
      });
    }
    const vol = inv.volumes.find((v) => v.host === p.ref.host && v.device === p.ref.device);
    if (!vol) {
      issues.push({
        path: `${p.path}.device`,
        message: `no volume registered on host "${p.ref.host}" at ${p.ref.device}`,
      });
    } else if (p.role === "buffer") bufferSize = vol.size;
    else sized.push({ path: p.path, role: p.role, size: vol.size });
    const twice = parts.findIndex((q) => sameRef(q.ref, p.ref));
    if (twice !== i) {
      issues.push({
        path: p.path,
        message: `${p.ref.host}:${p.ref.device} is already used as ${parts[twice].path}`,
      });
    }
    for (const other of inv.tasks) {
      if (other.name === t.name) continue;
      // the buffer is the gateway's journal, which every task shares (bounded per task by M)
      if (
        groupPartitions(other.group).some((q) =>
          sameRef(q.ref, p.ref) && !(p.role === "buffer" && q.role === "buffer")
        )
      ) {
        issues.push({
          path: p.path,
          message: `${p.ref.host}:${p.ref.device} belongs to task "${other.name}"`,
        });
      }
    }
  });
  if (sized.length > 1) {
    const want = sized[0].size;
    for (const s of sized.slice(1)) {
      if (s.size !== want) {
        issues.push({
          path: s.path,
          message:
            `size ${formatBytes(s.size)} (${s.size} bytes) differs from the LSP's ${formatBytes(want)} ` +
            `(${want} bytes): every partition of a group must have the same size`,
        });
      }
    }
  }
  if (bufferSize !== undefined && t.mirror.bufferBound !== undefined && t.mirror.bufferBound > bufferSize) {
    issues.push({
      path: "mirror.bufferBound",
      message: `${formatBytes(t.mirror.bufferBound)} is more than the buffer partition holds (${
        formatBytes(bufferSize)
      })`,
    });
  }
  if (t.recovery.source && t.recovery.source !== "lgp") {
    const site = t.recovery.source.split("@")[1];
    if (!g.remotes.some((r) => r.site === site)) {
      issues.push({ path: "recovery.source", message: `site "${site}" is not a remote center of this task` });
    }
  }
  return issues;
}

/** A zod error as issues with dotted paths. */
export function zodIssues(e: z.ZodError): Issue[] {
  return e.issues.map((i) => {
    const path = i.path.map(String).join(".");
    if (i.code === "unrecognized_keys") {
      return { path: path || "body", message: `unknown field(s): ${i.keys.join(", ")}` };
    }
    return { path: path || "body", message: i.message };
  });
}

/** One line naming every problem: `group.local.lsp.host: unknown host "x"; …` */
export function describeIssues(issues: Issue[]): string {
  return issues.map((i) => `${i.path}: ${i.message}`).join("; ");
}
