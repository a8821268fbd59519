// The gateway's database schema (drizzle-orm over libsql). Migrations are generated
// from this file with `deno task db:generate` into src/db/migrations and run at start.
import { integer, primaryKey, sqliteTable, text, uniqueIndex } from "drizzle-orm/sqlite-core";

/** Volumes known to this gateway: an agent's volume and its mirror image (the LGP). */
export const volumes = sqliteTable("volumes", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  agent: text("agent").notNull(),
  name: text("name").notNull(),
  size: integer("size").notNull(),
  mirrorPath: text("mirror_path").notNull(),
  /** Highest sequence number durable in the journal. */
  lastSeq: integer("last_seq").notNull().default(0),
  /** Highest sequence number applied to the mirror and made durable there. */
  appliedSeq: integer("applied_seq").notNull().default(0),
  /** The local image's state: empty, consistent, inconsistent (a synchronisation is running). */
  state: text("state").notNull().default("empty"),
  /**
   * 1 while no remote site receives the volume (its task is paused or deleted): the senders
   * skip its records; its images stay as they are.
   */
  retired: integer("retired").notNull().default(0),
  createdAt: integer("created_at").notNull(),
}, (t) => [uniqueIndex("volumes_agent_name").on(t.agent, t.name)]);

/** The journal ring's identity and positions (one row). */
export const journalState = sqliteTable("journal_state", {
  id: integer("id").primaryKey(),
  ringId: text("ring_id").notNull(),
  ringSize: integer("ring_size").notNull(),
  /** Oldest position still held. */
  tail: integer("tail").notNull(),
  /** Position up to which records are durable and indexed. */
  head: integer("head").notNull(),
  /** Position up to which records are applied to the mirrors and synced. */
  appliedPos: integer("applied_pos").notNull(),
});

/** One row per group commit: the journal's index of what the ring holds. */
export const segments = sqliteTable("segments", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  startPos: integer("start_pos").notNull(),
  endPos: integer("end_pos").notNull(),
  records: integer("records").notNull(),
  bytes: integer("bytes").notNull(),
  firstTime: integer("first_time").notNull(),
  lastTime: integer("last_time").notNull(),
});

/** Journal readers that hold records back (the mirror, each remote site, each standby server). */
export const cursors = sqliteTable("cursors", {
  name: text("name").primaryKey(),
  /** Everything before this journal position is acknowledged by this reader. */
  pos: integer("pos").notNull(),
  updatedAt: integer("updated_at").notNull(),
});

/** Per reader and volume: what the far side acknowledged and the state of its copy. */
export const cursorVolumes = sqliteTable("cursor_volumes", {
  cursor: text("cursor").notNull(),
  volumeId: integer("volume_id").notNull(),
  ackedSeq: integer("acked_seq").notNull(),
  /** consistent, syncing, degraded */
  state: text("state").notNull(),
  /** Records of the volume up to this sequence number are void (undone by a recovery) and never sent. */
  voidUpTo: integer("void_up_to").notNull().default(0),
  updatedAt: integer("updated_at").notNull(),
}, (t) => [primaryKey({ columns: [t.cursor, t.volumeId] })]);

/** Every state change of detectors, switches and tasks, with its cause and the values behind it. */
export const auditLog = sqliteTable("audit_log", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  time: integer("time").notNull(),
  /** What it concerns: an agent, a service, a site. */
  subject: text("subject").notNull(),
  kind: text("kind").notNull(),
  fromState: text("from_state"),
  toState: text("to_state"),
  cause: text("cause").notNull(),
  /** JSON of the values that led to it. */
  detail: text("detail").notNull(),
});

/** Protected services and where their traffic goes: the recorded state the DNAT rules are reconciled to. */
export const services = sqliteTable("services", {
  name: text("name").primaryKey(),
  /** protected, failing-over, failed-over */
  state: text("state").notNull(),
  /** The remote site serving it while failed over. */
  site: text("site"),
  /** JSON of the switch rule while failed over (null: no rule). */
  rule: text("rule"),
  updatedAt: integer("updated_at").notNull(),
});

/** Agents' volumes that must not accept writes (their service runs elsewhere). */
export const fences = sqliteTable("fences", {
  agent: text("agent").primaryKey(),
  reason: text("reason").notNull(),
  since: integer("since").notNull(),
});

/** Data recoveries: running, scheduled, finished; the checkpoint lets an interrupted one resume. */
export const recoveries = sqliteTable("recoveries", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  /** agent/name of the volume. */
  volume: text("volume").notNull(),
  /** JSON { kind: lgp|rgp|rsp, site? } */
  source: text("source").notNull(),
  /** lsp (the agent's volume) or lgp (this gateway's mirror) */
  target: text("target").notNull(),
  strategy: text("strategy").notNull(),
  mode: text("mode").notNull(),
  chunkSize: integer("chunk_size").notNull(),
  /** scheduled, running, done, failed, cancelled */
  status: text("status").notNull(),
  scheduledAt: integer("scheduled_at"),
  /** First chunk not yet done. */
  checkpoint: integer("checkpoint").notNull().default(0),
  chunks: integer("chunks").notNull().default(0),
  bytesCompared: integer("bytes_compared").notNull().default(0),
  bytesMoved: integer("bytes_moved").notNull().default(0),
  createdAt: integer("created_at").notNull(),
  startedAt: integer("started_at"),
  finishedAt: integer("finished_at"),
  error: text("error"),
  /** Why this source (policy mode). */
  explanation: text("explanation"),
  force: integer("force").notNull().default(0),
  /** Asked: auto, scan or tracked; once run: full, scan or tracked (what it did). */
  method: text("method").notNull().default("auto"),
  /** JSON [{ kind, site? }]: further sources the chunks are pulled from at once. */
  also: text("also").notNull().default("[]"),
  /** moved (the chunks written, and an audit sample when tracked) or full (every chunk). */
  verify: text("verify").notNull().default("moved"),
  /** Why this method: the tracked sets used, or why there was none. */
  methodReason: text("method_reason"),
});

// ------------------------------------------------------------------ protection tasks (src/tasks/)

/** Centers: the local (production) center and the remote (recovery) centers. */
export const sites = sqliteTable("sites", {
  name: text("name").primaryKey(),
  /** local or remote */
  role: text("role").notNull(),
  description: text("description").notNull().default(""),
  /** 1 when the gateway found it by itself (its own site, a --remote site); see src/tasks/discovery.ts */
  discovered: integer("discovered").notNull().default(0),
  /** When the gateway last saw it (ms; null: never): its own site always, a remote one while linked */
  lastSeen: integer("last_seen"),
  createdAt: integer("created_at").notNull(),
  updatedAt: integer("updated_at").notNull(),
});

/** Machines of a center: application servers (agents) and gateways. */
export const hosts = sqliteTable("hosts", {
  name: text("name").primaryKey(),
  site: text("site").notNull(),
  /** application or gateway */
  role: text("role").notNull(),
  address: text("address"),
  /** The agent id an application host runs (null: its name). */
  agent: text("agent"),
  /** 1 when found by itself: a gateway, or the server of an agent that connected */
  discovered: integer("discovered").notNull().default(0),
  /** When last seen (ms; null: never): a gateway while reachable, an agent while connected */
  lastSeen: integer("last_seen"),
  createdAt: integer("created_at").notNull(),
  updatedAt: integer("updated_at").notNull(),
});

/** Partitions (the API's "volumes"): a device of a host and its size. */
export const partitions = sqliteTable("partitions", {
  name: text("name").primaryKey(),
  host: text("host").notNull(),
  device: text("device").notNull(),
  size: integer("size").notNull(),
  /** 1 when reported by its agent (a device it may serve) or its gateway (journal, mirror, replica) */
  discovered: integer("discovered").notNull().default(0),
  /** When last reported (ms; null: never) */
  lastSeen: integer("last_seen"),
  createdAt: integer("created_at").notNull(),
  updatedAt: integer("updated_at").notNull(),
}, (t) => [uniqueIndex("partitions_host_device").on(t.host, t.device)]);

/** Protection tasks T = (G, M, R, S): group, mirror and recovery strategies as JSON, and the state. */
export const tasks = sqliteTable("tasks", {
  name: text("name").primaryKey(),
  description: text("description").notNull().default(""),
  /** JSON of the group G */
  groupJson: text("group_json").notNull(),
  /** JSON of the mirror strategy M */
  mirrorJson: text("mirror_json").notNull(),
  /** JSON of the recovery strategy R */
  recoveryJson: text("recovery_json").notNull(),
  /** The local gateway's protected service switched by this task's failover, if any. */
  service: text("service"),
  /** JSON {action, reason, at} of the last start or resume that failed, until one succeeds (null: none) */
  failureJson: text("failure_json"),
  /** JSON of the task's QoS targets (detection, RTO, RPO), if any. */
  targetsJson: text("targets_json"),
  state: text("state").notNull(),
  stateSince: integer("state_since").notNull(),
  createdAt: integer("created_at").notNull(),
  updatedAt: integer("updated_at").notNull(),
});

/** Failover drills of tasks (src/drills/): scheduled, running and graded ones, the history. */
export const drills = sqliteTable("drills", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  task: text("task").notNull(),
  /** The remote center tested (null: chosen when it starts). */
  site: text("site"),
  /** scheduled, running, passed, failed, cancelled */
  status: text("status").notNull(),
  /** When a scheduled drill starts (ms since the epoch), and every how long it repeats. */
  scheduledAt: integer("scheduled_at"),
  everyMs: integer("every_ms"),
  startedAt: integer("started_at"),
  finishedAt: integer("finished_at"),
  /** Measured: drill start to the service check passing on the test copy, and the copy's lag. */
  rtoMs: integer("rto_ms"),
  rpoMs: integer("rpo_ms"),
  /** JSON: the targets graded against, the reasons of a failed grade, the copy and the steps. */
  detail: text("detail").notNull().default("{}"),
  /** Who asked for it (user, token, schedule). */
  requestedBy: text("requested_by").notNull(),
  createdAt: integer("created_at").notNull(),
});

// ------------------------------------------------------------------ web access (src/web/)

/** People who log in to the web UI and API: a scrypt hash (with its salt and parameters) and a role. */
export const users = sqliteTable("users", {
  name: text("name").primaryKey(),
  /** admin (may change things) or viewer (read-only) */
  role: text("role").notNull(),
  /** scrypt$N$r$p$SALT$HASH (base64) */
  passwordHash: text("password_hash").notNull(),
  createdAt: integer("created_at").notNull(),
  updatedAt: integer("updated_at").notNull(),
});

/** Login sessions; the id is only stored as its SHA-256. */
export const sessions = sqliteTable("sessions", {
  idHash: text("id_hash").primaryKey(),
  user: text("user").notNull(),
  /** The session's anti-CSRF token (sent back in X-CSRF-Token). */
  csrf: text("csrf").notNull(),
  createdAt: integer("created_at").notNull(),
  lastSeen: integer("last_seen").notNull(),
  expiresAt: integer("expires_at").notNull(),
});

/** API tokens for automation; only their SHA-256 is stored. */
export const apiTokens = sqliteTable("api_tokens", {
  name: text("name").primaryKey(),
  tokenHash: text("token_hash").notNull(),
  /** admin or viewer */
  role: text("role").notNull(),
  createdAt: integer("created_at").notNull(),
  lastUsed: integer("last_used"),
}, (t) => [uniqueIndex("api_tokens_hash").on(t.tokenHash)]);

/**
 * Named checkpoints (issue 15): a name for a sequence number of a volume, the same point at every
 * remote site (each site keeps it with its recovery points; it travels in each site's stream
 * after the record it names, so a site that was away gets it when it catches up).
 */
export const checkpoints = sqliteTable("checkpoints", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  task: text("task").notNull(),
  /** AGENT/NAME of the task's volume. */
  volume: text("volume").notNull(),
  name: text("name").notNull(),
  seq: integer("seq").notNull(),
  /** When it was made (the gateway's clock). */
  createdAt: integer("created_at").notNull(),
  createdBy: text("created_by").notNull(),
}, (t) => [uniqueIndex("checkpoints_volume_name").on(t.volume, t.name)]);
