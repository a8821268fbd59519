// Parses a protected service given on the command line:
// NAME=agent:AGENT,address:IP:PORT,site:SITE,target:IP:PORT[,protocol:tcp|udp]
//   [,td:DURATION,tmr:DURATION,tm:DURATION][,rto:DURATION][,rpo:DURATION]
// td, tmr, tm: the detection targets T_D^U, T_MR^L, T_M^U (all three or none); rto, rpo: a drill's.
import { NAME_RE } from "../names.ts";
import { validateAddress, validatePort } from "../switch/rules.ts";
import type { ServiceConfig } from "./controller.ts";
import { parseDuration } from "../cli/flags.ts";
import { describeIssues, targetsSchema, zodIssues } from "../tasks/model.ts";

const TARGET_KEYS = ["td", "tmr", "tm", "rto", "rpo"];

function parseTargets(where: string, fields: Map<string, string>): ServiceConfig["targets"] {
  const ms = (k: string) => {
    const v = fields.get(k);
    if (v === undefined) return undefined;
    try {
      return parseDuration(v);
    } catch {
      throw new Error(`${where}: ${k}:${v} is not a duration (e.g. 500ms, 2s, 30d)`);
    }
  };
  const [td, tmr, tm] = [ms("td"), ms("tmr"), ms("tm")];
  const given = [td, tmr, tm].filter((x) => x !== undefined).length;
  if (given !== 0 && given !== 3) throw new Error(`${where}: td, tmr and tm go together`);
  const raw = {
    ...(given ? { detection: { detectionMs: td, mistakeRecurrenceMs: tmr, mistakeDurationMs: tm } } : {}),
    ...(fields.has("rto") ? { rtoMs: ms("rto") } : {}),
    ...(fields.has("rpo") ? { rpoMs: ms("rpo") } : {}),
  };
  if (Object.keys(raw).length === 0) return undefined;
  const r = targetsSchema.safeParse(raw);
  if (!r.success) throw new Error(`${where}: ${describeIssues(zodIssues(r.error))}`);
  return r.data;
}

function endpoint(where: string, text: string | undefined): { address: string; port: number } {
  const m = /^([^:]+):(\d+)$/.exec(text ?? "");
  if (!m) throw new Error(`${where}: expected IP:PORT (got "${text ?? ""}")`);
  return { address: validateAddress(where, m[1]), port: validatePort(where, Number(m[2])) };
}

export function parseService(name: string, spec: string): ServiceConfig {
  const where = `--service ${name}`;
  const fields = new Map<string, string>();
  for (const part of spec.split(",")) {
    const i = part.indexOf(":");
    if (i <= 0) throw new Error(`${where}: "${part}" is not KEY:VALUE`);
    const key = part.slice(0, i);
    if (fields.has(key)) throw new Error(`${where}: ${key} given twice`);
    fields.set(key, part.slice(i + 1));
  }
  for (const k of fields.keys()) {
    if (!["agent", "address", "site", "target", "protocol", ...TARGET_KEYS].includes(k)) {
      throw new Error(`${where}: unknown key "${k}"`);
    }
  }
  const agent = fields.get("agent") ?? "";
  const site = fields.get("site") ?? "";
  if (!NAME_RE.test(agent)) throw new Error(`${where}: agent:NAME is required`);
  if (!NAME_RE.test(site)) throw new Error(`${where}: site:NAME is required`);
  const protocol = fields.get("protocol") ?? "tcp";
  if (protocol !== "tcp" && protocol !== "udp") throw new Error(`${where}: protocol must be tcp or udp`);
  const targets = parseTargets(where, fields);
  return {
    name,
    agent,
    site,
    protocol,
    service: endpoint(`${where} address`, fields.get("address")),
    target: endpoint(`${where} target`, fields.get("target")),
    ...(targets ? { targets } : {}),
  };
}
