// The control messages of the agent, standby and site links: JSON objects in Control frames
// (src/wire/frames.ts), one zod union per direction of each link, discriminated by `type`. Every
// receiver parses what it gets (parseControl) and hands it to the handler of its type in a table
// typed from the union (Handlers: a type without a handler does not compile); every sender builds
// its messages as the union's types (a wrong or missing field does not compile). A message that
// is not an object, has no type or an unknown one, or a field of the wrong shape is refused with
// an error naming the link, the type and the field; the receiver logs it with the peer's name and
// the link stays up, as for any frame it cannot use. A refused request that carries a usable id
// is answered at once with a `refused` message by that id (the error): its requester fails then,
// with the receiver's reason, instead of waiting for its timeout.
//
// The agent link (local gateway ↔ agent; the control plane, src/tasks/control-plane.ts):
//   to the agent:   assign, unassign (each answered by its id), fence, unfence, heartbeat-interval
//   to the gateway: assigned, unassigned (the answers), refused, assignments (what the agent
//                   remembers, after every connection), devices (src/capture/devices.ts)
// The standby link (remote gateway ↔ standby agent; src/site/standby-link.ts):
//   to the standby: assign, unassign, promote, demote, rollback, drill-up, drill-down (each answered)
//   to the gateway: their answers (assigned, unassigned, promoted, demoted, rollback-set,
//                   drill-ready, drill-stopped), refused, assignments, devices
// A standby's `standby-ready` (its copies are announced: the stream may start) is the link's own:
// src/link/gateway-listener.ts takes it before any receiver.
// The site link (local gateway → remote gateway; src/replication/site-link.ts): every request
// (promote, demote, drill-up/-down, test-start/-renew/-stop, retention, point, points, copies,
// standbys, inventory) is answered by its id with a message of the request's own type (ok, error,
// and what that request returns), or `refused`. The site link's other JSON frames (the hello,
// the welcome, checkpoints, hash requests) are not control messages: src/replication/ reads them.
import { AGENT_NAME_HINT, AGENT_NAME_RE, NAME_HINT, NAME_RE, VOLUME_KEY_RE } from "../names.ts";
import { z } from "zod";
import { MAX_INTERVAL_MS, MIN_INTERVAL_MS } from "../heartbeat/channel.ts";

/** A name of a volume, a task or a host (src/names.ts). */
export const name64 = z.string().regex(NAME_RE, NAME_HINT);
/** An agent's name as the links carry it. */
export const name128 = z.string().regex(AGENT_NAME_RE, AGENT_NAME_HINT);
/**
 * An object keyed by names. zod's record drops a "__proto__" key (JSON.parse makes it an own
 * key) instead of checking it against the key's schema, which would take the message without it:
 * it is refused, as the names refuse it (found by tests/fuzz-control.test.ts).
 */
function byName<V extends z.ZodType>(key: z.ZodString, value: V) {
  return z.unknown()
    .refine((o) => typeof o !== "object" || o === null || !Object.hasOwn(o, "__proto__"), {
      message: `"__proto__" is not a name`,
    })
    .pipe(z.record(key, value));
}
/** A request's id, echoed by its answer (src/wire/requests.ts). */
const requestId = z.number().int().nonnegative();
const byteCount = z.number().int().positive();
const absolutePath = z.string().startsWith("/", "must be an absolute path").refine(
  (p) => !p.split("/").includes(".."),
  "must not contain '..'",
);

/** A volume an agent serves because its gateway assigns it (src/capture/assignments.ts). */
export const assignmentSchema = z.object({ name: name64, path: absolutePath, size: byteCount });
const deviceSchema = z.object({
  path: z.string().startsWith("/", "must be an absolute path"),
  size: byteCount,
});

// --- the orders and reports both links share
const assign = z.object({ type: z.literal("assign"), id: requestId, volumes: z.array(assignmentSchema) });
const unassign = z.object({ type: z.literal("unassign"), id: requestId, name: name64 });
const assigned = z.object({
  type: z.literal("assigned"),
  id: requestId,
  results: z.array(z.object({ name: z.string(), ok: z.boolean(), error: z.string().optional() })),
});
const unassigned = z.object({
  type: z.literal("unassigned"),
  id: requestId,
  name: z.string(),
  ok: z.boolean(),
  error: z.string().optional(),
});
const assignments = z.object({ type: z.literal("assignments"), names: z.array(z.string()) });
const devices = z.object({ type: z.literal("devices"), devices: z.array(deviceSchema) });

// --- the agent link's own
const fence = z.object({ type: z.literal("fence"), reason: z.string().optional() });
const unfence = z.object({ type: z.literal("unfence") });
const heartbeatInterval = z.object({
  type: z.literal("heartbeat-interval"),
  etaMs: z.number().min(MIN_INTERVAL_MS).max(MAX_INTERVAL_MS),
});

/** A message refused by its receiver: the request with this id fails with the error. */
const refused = z.object({ type: z.literal("refused"), id: requestId, error: z.string() });

// --- the standby link's own
const promote = z.object({ type: z.literal("promote"), id: requestId, equal: z.boolean() });
const demote = z.object({ type: z.literal("demote"), id: requestId });
const rollback = z.object({ type: z.literal("rollback"), id: requestId, on: z.boolean() });
// the export and volume are checked by the standby (src/drills/standby.ts), which answers why
const drillUp = z.object({
  type: z.literal("drill-up"),
  id: requestId,
  export: z.string(),
  volume: z.string(),
  timeoutMs: z.number().optional(),
});
const drillDown = z.object({
  type: z.literal("drill-down"),
  id: requestId,
  export: z.string(),
  volume: z.string(),
});
/** An answer that is done or not, with the reason. */
const outcome = <T extends string>(type: T) =>
  z.object({ type: z.literal(type), id: requestId, ok: z.boolean(), error: z.string().optional() });
const drillReady = outcome("drill-ready").extend({ checkMs: z.number().optional() });

// --- the site link (local gateway → remote gateway, each request answered by its type and id)
/** A volume as the sites name it: AGENT/NAME. */
const volumeKey = z.string().regex(VOLUME_KEY_RE, "must be AGENT/NAME");
/** A point of a volume's retention: a sequence or a checkpoint's name (src/retention/site.ts parsePoint). */
const point = z.union([z.number(), z.string()]);
const request = <T extends string, S extends z.ZodRawShape>(type: T, shape: S) =>
  z.object({ type: z.literal(type), id: requestId, ...shape });
const siteRequestList = [
  request("promote", { agent: name128, point: point.optional() }),
  request("demote", { agent: name128 }),
  request("drill-up", { test: z.string(), timeoutMs: z.number().optional() }),
  request("drill-down", { test: z.string() }),
  request("test-start", {
    task: name64,
    volume: volumeKey,
    durationSeconds: z.number().int().positive(),
    point: point.optional(),
  }),
  request("test-renew", { test: z.string() }),
  request("test-stop", { test: z.string().optional(), task: z.string().optional() }),
  request("retention", {}),
  request("point", { volume: volumeKey, point }),
  request("points", { volume: volumeKey, limit: z.number().int().positive().optional() }),
  request("copies", { volume: volumeKey }),
  // a local site's whole desired state of this site's standby copies, per standby agent
  request("standbys", { agents: byName(name128, z.array(assignmentSchema)) }),
  request("inventory", {}),
] as const;
const answer = <T extends string, S extends z.ZodRawShape>(type: T, shape: S) => outcome(type).extend(shape);
/**
 * An answer that is done, with everything it returns (each field as the remote gateway's handler
 * builds it, src/site/site-requests.ts), or not done, with the reason.
 */
const doneOrNot = <T extends string, S extends z.ZodRawShape>(type: T, shape: S) =>
  z.discriminatedUnion("ok", [
    z.object({ type: z.literal(type), id: requestId, ok: z.literal(true), ...shape }),
    z.object({ type: z.literal(type), id: requestId, ok: z.literal(false), error: z.string().optional() }),
  ]);
const count = z.number().int().nonnegative();
/** A point of a volume's retention (src/retention/points.ts Point). */
const sitePoint = z.object({
  seq: count,
  time: z.number(),
  end: count,
  kind: z.enum(["barrier", "sync", "base", "record"]),
  names: z.array(z.string()).optional(),
});
const seqAndTime = z.object({ seq: count, time: z.number() });
/** A volume's retention at a site (src/retention/retention.ts RetentionStatus). */
const siteRetention = z.object({
  volume: z.string(),
  windowMs: z.number(),
  maxBytes: z.number(),
  bytes: count,
  points: count,
  oldest: seqAndTime.optional(),
  newest: seqAndTime,
  consistent: z.boolean(),
  forcedExpiries: count,
  error: z.string().optional(),
});
/** A standby copy rolled back to a point before its promotion (src/site/promotion.ts). */
const rolledBack = z.object({ volume: volumeKey, seq: count, bytesMoved: count, verified: z.boolean() });
export type RolledBack = z.infer<typeof rolledBack>;
/** A failover test's copy at a site (src/failover/test-copies.ts TestCopy). */
const testCopy = z.object({
  id: z.string(),
  site: z.string(),
  task: z.string(),
  volume: z.string(),
  seq: count,
  time: z.number(),
  size: count,
  export: z.string(),
  started: z.number(),
  expires: z.number(),
});
/** What one of a site's copies of a volume holds (src/recovery/service.ts CopyInfo). */
const copyInfo = z.object({ state: z.string(), lastSeq: count, lastTime: z.number() });
/** A site's inventory (src/tasks/site-inventory.ts SiteInventory). */
const siteInventory = {
  site: z.string(),
  journal: deviceSchema,
  replicaDir: z.string(),
  replicas: z.array(deviceSchema.extend({ agent: z.string(), name: z.string() })),
  agents: z.array(z.object({
    agent: name64, // a discovered standby agent becomes a host of the task model
    connected: z.boolean(),
    /** How long ago it was last connected (0 while it is): ages, so the sites' clocks need not agree. */
    agoMs: z.number().nonnegative(),
    devices: z.array(deviceSchema),
  })),
};
const siteAnswerList = [
  answer("promote", { rolledBack: z.array(rolledBack).optional() }),
  answer("demote", { note: z.string().optional(), held: byName(name64, z.number()).optional() }),
  answer("drill-up", { checkMs: z.number().nullable().optional() }),
  answer("drill-down", {}),
  doneOrNot("test-start", { test: testCopy }),
  doneOrNot("test-renew", { test: testCopy }),
  answer("test-stop", { found: z.boolean().optional() }),
  answer("retention", {
    windowMs: z.number().optional(),
    maxBytes: z.number().optional(),
    volumes: z.array(siteRetention).optional(),
  }),
  answer("point", { seq: z.number().optional(), time: z.number().optional() }),
  // a volume without a retention yet has no status: `retention` is absent then
  doneOrNot("points", {
    points: z.array(sitePoint),
    retention: siteRetention.optional(),
    windowMs: z.number(),
  }),
  // the standby's copy is null while it is not fed
  doneOrNot("copies", { rgp: copyInfo, rsp: copyInfo.nullable() }),
  // each desired copy's state, per standby agent
  doneOrNot("standbys", {
    agents: byName(
      name128,
      z.array(z.object({
        name: z.string(),
        state: z.enum(["pending", "assigned", "failed"]),
        error: z.string().optional(),
      })),
    ),
  }),
  doneOrNot("inventory", siteInventory),
] as const;

/** One direction of a link: its name (for errors), its union, and the types it carries. */
export interface ControlLink<M extends { type: string }> {
  name: string;
  schema: z.ZodType<M>;
  types: readonly M["type"][];
}

/** A message of a link: one object, or (an answer done or not) a union of objects of one type. */
type Message =
  | z.ZodObject<{ type: z.ZodLiteral<string> }>
  | z.ZodDiscriminatedUnion<z.ZodObject<{ type: z.ZodLiteral<string> }>[]>;

function typeOf(m: Message): string {
  return m instanceof z.ZodObject ? m.shape.type.value : typeOf(m.options[0]);
}

function link<O extends readonly [Message, ...Message[]]>(
  name: string,
  options: O,
): ControlLink<z.infer<O[number]>> {
  return {
    name,
    schema: z.discriminatedUnion("type", options),
    types: options.map(typeOf),
  };
}

/** Local gateway → agent. */
export const agentOrders = link("agent link (gateway to agent)", [
  assign,
  unassign,
  fence,
  unfence,
  heartbeatInterval,
]);
/** Agent → local gateway. */
export const agentReports = link("agent link (agent to gateway)", [
  assigned,
  unassigned,
  refused,
  assignments,
  devices,
]);
/** Remote gateway → standby agent. */
export const standbyOrders = link(
  "standby link (gateway to standby)",
  [assign, unassign, promote, demote, rollback, drillUp, drillDown],
);
/** Standby agent → remote gateway (a promoted standby that restarted reports like an agent). */
export const standbyReports = link("standby link (standby to gateway)", [
  assigned,
  unassigned,
  refused,
  assignments,
  devices,
  outcome("promoted"),
  outcome("demoted"),
  outcome("rollback-set"),
  drillReady,
  outcome("drill-stopped"),
]);

/** Local gateway → remote gateway. */
export const siteRequests = link("site link (local to remote gateway)", siteRequestList);
/** Remote gateway → local gateway: each request's answer, by its id. */
export const siteAnswers = link("site link (remote to local gateway)", [...siteAnswerList, refused]);

export type AgentOrder = z.infer<typeof agentOrders.schema>;
export type AgentReport = z.infer<typeof agentReports.schema>;
export type StandbyOrder = z.infer<typeof standbyOrders.schema>;
export type StandbyReport = z.infer<typeof standbyReports.schema>;
export type SiteRequest = z.infer<typeof siteRequests.schema>;
export type SiteAnswer = z.infer<typeof siteAnswers.schema>;
/** What a site answers to a request of type K, without the type and id its link adds. */
export type SiteAnswerBody<K extends SiteRequest["type"]> = Bare<Extract<SiteAnswer, { type: K }>>;
/** A message without its type and id (each member of a union on its own: done or not). */
type Bare<M> = M extends unknown ? Omit<M, "type" | "id"> : never;
/** Each site request's answer body, by type (the remote gateway's handlers resolve with these). */
export type SiteAnswerBodies = { [K in SiteRequest["type"]]: SiteAnswerBody<K> };
/** A message as its sender builds it: the request helper adds the id. */
export type Unsent<M> = M extends unknown ? Omit<M, "id"> : never;
/** The answer to a site request of type K (a refused request rejects instead). */
export type SiteAnswerTo<K extends SiteRequest["type"]> = Extract<SiteAnswer, { type: K }>;
/** A request to a remote site and its answer (rejects when the site is not linked or refused it). */
export type SiteRequester = <M extends Unsent<SiteRequest>>(
  site: string,
  msg: M,
  timeoutMs: number,
) => Promise<SiteAnswerTo<M["type"]>>;
export type AssignOrder = z.infer<typeof assign>;
/** A point of a volume's retention at a site, and the volume's retention there (a `points` answer). */
export type SitePoint = z.infer<typeof sitePoint>;
export type SiteRetention = z.infer<typeof siteRetention>;
export type UnassignOrder = z.infer<typeof unassign>;
export type DrillOrder = z.infer<typeof drillUp> | z.infer<typeof drillDown>;

/** A control message refused: the message says which link, type and field. */
export class ControlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ControlError";
  }
}

/** Checks a decoded control message against one direction of a link; throws a ControlError. */
export function parseControl<M extends { type: string }>(l: ControlLink<M>, raw: unknown): M {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ControlError(`${l.name}: a control message must be a JSON object, not ${kindOf(raw)}`);
  }
  const type = (raw as { type?: unknown }).type;
  if (typeof type !== "string") throw new ControlError(`${l.name}: the message has no type (a string)`);
  if (!(l.types as readonly string[]).includes(type)) {
    throw new ControlError(`${l.name}: unknown message type ${JSON.stringify(type.slice(0, 64))}`);
  }
  const r = l.schema.safeParse(raw);
  if (r.success) return r.data;
  throw new ControlError(`${l.name}: "${type}" message refused: ${fieldErrors(r.error)}`);
}

/** The first fields at fault in a refused JSON body, each with its path and why. */
export function fieldErrors(e: z.ZodError): string {
  return e.issues.slice(0, 4).map((i) => `${i.path.map(String).join(".") || "(message)"}: ${i.message}`)
    .join("; ");
}

function kindOf(v: unknown): string {
  return v === null ? "null" : Array.isArray(v) ? "an array" : typeof v;
}

/** A receiver's table: one handler per type of the union; `from` names the peer. */
export type Handlers<M extends { type: string }> = {
  [K in M["type"]]: (m: Extract<M, { type: K }>, from: string) => void;
};

/**
 * A receiver: each message is parsed and handed to its type's handler. A refused one is logged
 * with the peer's name (`from`) and dropped: nothing throws, the link stays up. One that carries
 * a usable id goes to `refusedById` too: a request's receiver answers it (a `refused` message),
 * an answer's receiver fails the request waiting for it.
 */
export function receiver<M extends { type: string }>(
  l: ControlLink<M>,
  handlers: Handlers<M>,
  log: { error(msg: string, fields: Record<string, unknown>): void },
  refusedById?: (from: string, id: number, error: string) => void,
): (from: string, raw: unknown) => void {
  return (from, raw) => {
    let m: M;
    try {
      m = parseControl(l, raw);
    } catch (e) {
      const error = (e as Error).message;
      log.error("control message refused", { from, error });
      const id = requestId.safeParse((raw as { id?: unknown } | null)?.id);
      if (id.success) refusedById?.(from, id.data, error);
      return;
    }
    (handlers[m.type as M["type"]] as (m: M, from: string) => void)(m, from);
  };
}

/** A table of requests' handlers, each resolving with its answer's body (the link adds type and id). */
export type Answerers<M extends { type: string; id: number }, B extends { [K in M["type"]]: unknown }> = {
  [K in M["type"]]: (m: Extract<M, { type: K }>, from: string) => Promise<B[K]>;
};

/**
 * The handlers of a receiver of requests that are answered later: each request's answer (or the
 * error it failed with) goes to `reply` with the request.
 */
export function answering<M extends { type: string; id: number }, B extends { [K in M["type"]]: unknown }>(
  table: Answerers<M, B>,
  reply: (m: M, answer: B[M["type"]] | Error) => void,
): Handlers<M> {
  const out: Record<string, (m: M, from: string) => void> = {};
  for (const [type, handle] of Object.entries(table)) {
    // a handler that throws before its promise fails the request like one that rejects
    out[type] = (m, from) =>
      void Promise.resolve().then(() => (handle as (m: M, from: string) => Promise<B[M["type"]]>)(m, from))
        .then(
          (a) => reply(m, a),
          (e) => reply(m, e instanceof Error ? e : new Error(String(e))),
        );
  }
  return out as unknown as Handlers<M>;
}
