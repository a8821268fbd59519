// The control messages of the agent and standby links: JSON objects in Control frames
// (src/wire/frames.ts), one zod union per direction of each link, discriminated by `type`. Every
// receiver parses what it gets (parseControl) and hands it to the handler of its type in a table
// typed from the union (Handlers: a type without a handler does not compile). A message that is
// not an object, has no type or an unknown one, or a field of the wrong shape is refused with an
// error naming the link, the type and the field; the receiver logs it with the peer's name and
// the link stays up, as for any frame it cannot use.
//
// The agent link (local gateway ↔ agent; the control plane, src/tasks/control-plane.ts):
//   to the agent:   assign, unassign (each answered by its id), fence, unfence, heartbeat-interval
//   to the gateway: assigned, unassigned (the answers), assignments (what the agent remembers,
//                   after every connection), devices (src/capture/devices.ts)
// The standby link (remote gateway ↔ standby agent; src/roles/remote-gateway.ts):
//   to the standby: assign, unassign, promote, demote, rollback, drill-up, drill-down (each answered)
//   to the gateway: their answers (assigned, unassigned, promoted, demoted, rollback-set,
//                   drill-ready, drill-stopped), assignments, devices
// A standby's `standby-ready` (its copies are announced: the stream may start) is the link's own:
// src/link/gateway-listener.ts takes it before any receiver. The site link's requests
// (src/replication/site-link.ts) are not typed here yet.
import { z } from "zod";
import { MAX_INTERVAL_MS, MIN_INTERVAL_MS } from "../heartbeat/channel.ts";

/** A volume's name on the links (as the gateways and agents check it elsewhere). */
const volumeName = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, "must be 1 to 64 of A-Z a-z 0-9 . _ -");
/** A request's id, echoed by its answer (src/wire/requests.ts). */
const requestId = z.number().int().nonnegative();
const byteCount = z.number().int().positive();
const absolutePath = z.string().startsWith("/", "must be an absolute path").refine(
  (p) => !p.split("/").includes(".."),
  "must not contain '..'",
);

/** A volume an agent serves because its gateway assigns it (src/capture/assignments.ts). */
export const assignmentSchema = z.object({ name: volumeName, path: absolutePath, size: byteCount });
const deviceSchema = z.object({
  path: z.string().startsWith("/", "must be an absolute path"),
  size: byteCount,
});

// --- the orders and reports both links share
const assign = z.object({ type: z.literal("assign"), id: requestId, volumes: z.array(assignmentSchema) });
const unassign = z.object({ type: z.literal("unassign"), id: requestId, name: volumeName });
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

/** One direction of a link: its name (for errors), its union, and the types it carries. */
export interface ControlLink<M extends { type: string }> {
  name: string;
  schema: z.ZodType<M>;
  types: readonly M["type"][];
}

function link<
  O extends readonly [
    z.ZodObject<{ type: z.ZodLiteral<string> }>,
    ...z.ZodObject<{ type: z.ZodLiteral<string> }>[],
  ],
>(
  name: string,
  options: O,
): ControlLink<z.infer<O[number]>> {
  return {
    name,
    schema: z.discriminatedUnion("type", options),
    types: options.map((o) => o.shape.type.value),
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
  assignments,
  devices,
  outcome("promoted"),
  outcome("demoted"),
  outcome("rollback-set"),
  drillReady,
  outcome("drill-stopped"),
]);

export type AgentOrder = z.infer<typeof agentOrders.schema>;
export type AgentReport = z.infer<typeof agentReports.schema>;
export type StandbyOrder = z.infer<typeof standbyOrders.schema>;
export type StandbyReport = z.infer<typeof standbyReports.schema>;
export type AssignOrder = z.infer<typeof assign>;
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
  const fields = r.error.issues.slice(0, 4).map((i) =>
    `${i.path.map(String).join(".") || "(message)"}: ${i.message}`
  );
  throw new ControlError(`${l.name}: "${type}" message refused: ${fields.join("; ")}`);
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
 * with the peer's name (`from`) and dropped: nothing throws, the link stays up.
 */
export function receiver<M extends { type: string }>(
  l: ControlLink<M>,
  handlers: Handlers<M>,
  log: { error(msg: string, fields: Record<string, unknown>): void },
): (from: string, raw: unknown) => void {
  return (from, raw) => {
    let m: M;
    try {
      m = parseControl(l, raw);
    } catch (e) {
      log.error("control message refused", { from, error: (e as Error).message });
      return;
    }
    (handlers[m.type as M["type"]] as (m: M, from: string) => void)(m, from);
  };
}
