// The agent role: exports each protected volume over NBD, intercepting every write and
// forwarding it to its gateway. From its flags and state it runs as a primary
// (src/agent/primary.ts) or as a standby at a remote site (src/agent/standby.ts).
import type { FlagSpec, Parsed } from "../cli/flags.ts";
import { UsageError } from "../cli/flags.ts";
import { ensurePrivateDir, list, num, optStr, pairs, type RoleHandle, str } from "../cli/common.ts";
import { Volume } from "../volume/volume.ts";
import { parseAddress } from "../link/address.ts";
import { readSecretFile } from "../wire/secret-file.ts";
import { AgentState } from "../capture/agent-state.ts";
import { parseCheck, ServiceMonitor } from "../health/service-check.ts";
import { startHeartbeatThread } from "../heartbeat/channel.ts";
import { checkPrefix } from "../capture/devices.ts";
import type { AgentContext } from "../agent/context.ts";
import { runPrimary } from "../agent/primary.ts";
import { runStandby } from "../agent/standby.ts";

export const agentFlags: FlagSpec[] = [
  {
    name: "id",
    type: "string",
    description: "this agent's name, as the gateway knows it",
    default: Deno.hostname(),
  },
  {
    name: "volume",
    type: "string",
    multiple: true,
    description:
      "a protected volume: export name and file or block device (without it the gateway assigns them)",
    placeholder: "NAME=PATH",
  },
  {
    name: "device-prefix",
    type: "string",
    multiple: true,
    description:
      "a directory whose files and block devices this agent may serve: reported to the gateway for its inventory; assignments elsewhere are refused",
    placeholder: "DIR",
  },
  {
    name: "data-dir",
    type: "string",
    description: "state directory (dirty maps)",
    default: "/var/lib/continuum/agent",
    placeholder: "DIR",
  },
  {
    name: "nbd-socket",
    type: "string",
    description: "Unix socket for NBD clients [default: DATA-DIR/nbd.sock]; 'off' disables",
    placeholder: "PATH",
  },
  {
    name: "nbd-listen",
    type: "string",
    description: "TCP address for NBD clients; 'off' disables",
    default: "127.0.0.1:10809",
    placeholder: "ADDR",
  },
  {
    name: "gateway",
    type: "string",
    description: "the local gateway (HOST:PORT or unix:PATH)",
    default: "127.0.0.1:7800",
    placeholder: "ADDR",
  },
  {
    name: "secret-file",
    type: "string",
    description: "file holding this agent's secret (shared with the gateway)",
    placeholder: "FILE",
  },
  {
    name: "on-gateway-loss",
    type: "string",
    description: "when the gateway is unreachable: block writes, or track dirty regions and continue",
    choices: ["block", "track"],
    default: "block",
  },
  {
    name: "gateway-timeout",
    type: "duration",
    description: "in block mode, how long a write waits for an absent gateway before failing",
    default: "30s",
  },
  {
    name: "dirty-chunk",
    type: "size",
    description: "granularity of the dirty map (resent unit after a crash or outage)",
    default: "1M",
  },
  {
    name: "standby",
    type: "boolean",
    description: "this server is a standby at a remote site: apply the replicated stream, refuse NBD writes",
    default: false,
  },
  {
    name: "on-promote",
    type: "string",
    description:
      "standby: command run (sh -c) when this server is promoted, e.g. mount and start the service",
    placeholder: "COMMAND",
  },
  {
    name: "on-demote",
    type: "string",
    description:
      "standby: command run (sh -c) when the service goes back to the primary site, before the volumes turn read-only, e.g. stop the service and unmount",
    placeholder: "COMMAND",
  },
  {
    name: "on-unfence",
    type: "string",
    description:
      "command run (sh -c) when the gateway lifts this server's fence after recovery or failback, e.g. mount and start the service",
    placeholder: "COMMAND",
  },
  {
    name: "service-check",
    type: "string",
    description: "how to check the service: tcp:HOST:PORT, http(s)://URL or exec:COMMAND",
    placeholder: "CHECK",
  },
  {
    name: "service-check-interval",
    type: "duration",
    description: "how often the service is checked",
    default: "200ms",
  },
  {
    name: "service-check-failures",
    type: "number",
    description: "failed checks in a row before the service counts as failed",
    default: 3,
  },
  {
    name: "service-check-timeout",
    type: "duration",
    description: "how long one check may take before it counts as failed (a busy service answers slowly)",
    default: "1s",
  },
  {
    name: "service-check-grace",
    type: "duration",
    description:
      "until the service check first passes, how long after the agent starts its failures do not count (the service starts once the volume is exported)",
    default: "60s",
  },
  {
    name: "heartbeat-to",
    type: "string",
    description: "where heartbeats go (UDP HOST:PORT) [default: the gateway's host, port 7810]",
    placeholder: "ADDR",
  },
  {
    name: "heartbeat-interval",
    type: "duration",
    description: "heartbeat period η",
    default: "100ms",
  },
  {
    name: "max-unconfirmed",
    type: "size",
    description: "records kept for resending until the gateway confirms them durable",
    default: "256M",
  },
];

export async function runAgent(p: Parsed): Promise<RoleHandle> {
  const dataDir = str(p, "data-dir");
  const id = str(p, "id");
  const volumesArg = pairs("volume", p["volume"]);
  const secretFile = optStr(p, "secret-file");
  if (!secretFile) {
    throw new UsageError("--secret-file is required (the agent's secret shared with the gateway)");
  }
  const secret = readSecretFile(secretFile);
  const chunk = num(p, "dirty-chunk");
  if (chunk < 4096 || chunk % 4096 !== 0) throw new UsageError("--dirty-chunk must be a multiple of 4096");
  const check = optStr(p, "service-check");
  const spec = check ? parseCheck(check) : undefined;
  const devicePrefixes = list(p, "device-prefix");
  for (const d of devicePrefixes) {
    const bad = checkPrefix(d);
    if (bad) throw new UsageError(bad);
  }
  ensurePrivateDir(dataDir);
  const volumes = new Map<string, Volume>();
  try {
    for (const [name, path] of volumesArg) {
      const volume = Volume.open(path);
      volumes.set(name, volume);
      if (volume.size === 0) throw new Error(`volume ${name} (${path}) is empty`);
    }
  } catch (e) {
    for (const v of volumes.values()) v.close();
    throw e;
  }
  const monitor = spec
    ? new ServiceMonitor({
      spec,
      intervalMs: num(p, "service-check-interval"),
      failures: num(p, "service-check-failures"),
      timeoutMs: num(p, "service-check-timeout"),
      startGraceMs: num(p, "service-check-grace"),
    })
    : undefined;
  const c: AgentContext = {
    p,
    id,
    secret,
    dataDir,
    state: await AgentState.load(dataDir),
    volumes,
    flagNames: new Set(volumesArg.keys()),
    devicePrefixes,
    monitor,
  };
  // a promoted standby stays a standby agent (promoted): its site can demote it
  const role = p["standby"] === true ? await runStandby(c) : await runPrimary(c);
  monitor?.start();
  const heartbeats = startHeartbeats(c);
  c.heartbeats = heartbeats;
  return {
    fatal: role.fatal,
    stop: async () => {
      monitor?.stop();
      await heartbeats?.close();
      await role.stop();
      for (const v of volumes.values()) v.close();
    },
  };
}

/** Heartbeats to the gateway's failure detector, carrying the service verdict. */
function startHeartbeats(c: AgentContext) {
  const explicit = optStr(c.p, "heartbeat-to");
  const gw = parseAddress(str(c.p, "gateway"));
  const target = explicit
    ? parseAddress(explicit)
    : gw.transport === "tcp"
    ? { ...gw, port: 7810 }
    : undefined;
  if (!target || target.transport !== "tcp") {
    if (explicit) throw new UsageError("--heartbeat-to must be HOST:PORT");
    return undefined;
  }
  return startHeartbeatThread({
    host: target.hostname,
    port: target.port,
    agentId: c.id,
    secret: c.secret,
    intervalMs: num(c.p, "heartbeat-interval"),
    getStatus: () => ({
      healthy: c.monitor?.healthy ?? true,
      detail: c.monitor?.detail ?? "no service check",
    }),
  });
}
