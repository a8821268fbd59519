// Parses a protected service given on the command line:
// NAME=agent:AGENT,address:IP:PORT,site:SITE,target:IP:PORT[,protocol:tcp|udp]
import { validateAddress, validatePort } from "../switch/rules.ts";
import type { ServiceConfig } from "./controller.ts";

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
    if (!["agent", "address", "site", "target", "protocol"].includes(k)) {
      throw new Error(`${where}: unknown key "${k}"`);
    }
  }
  const agent = fields.get("agent") ?? "";
  const site = fields.get("site") ?? "";
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(agent)) throw new Error(`${where}: agent:NAME is required`);
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(site)) throw new Error(`${where}: site:NAME is required`);
  const protocol = fields.get("protocol") ?? "tcp";
  if (protocol !== "tcp" && protocol !== "udp") throw new Error(`${where}: protocol must be tcp or udp`);
  return {
    name,
    agent,
    site,
    protocol,
    service: endpoint(`${where} address`, fields.get("address")),
    target: endpoint(`${where} target`, fields.get("target")),
  };
}
