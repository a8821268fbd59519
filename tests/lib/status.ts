// A local gateway's status for the tests of its readers (web API, event stream, metrics): an idle
// gateway's, with the parts a test sets. The idle one is typed whole, so it follows the real type.
import type { GatewayStatus } from "../../src/web/gateway-status.ts";

export function gatewayStatus(parts: Record<string, unknown> = {}): GatewayStatus {
  const idle: GatewayStatus = {
    role: "local-gateway",
    site: "prod",
    uptimeMs: 0,
    agents: [],
    refused: {},
    liveness: [],
    heartbeats: { accepted: 0, dropped: {} as GatewayStatus["heartbeats"]["dropped"] },
    services: [],
    assignments: [],
    journal: { tail: 0, durable: 0, head: 0, capacity: 0, used: 0 },
    volumes: [],
    sites: [],
    tests: [],
    retention: [],
    detectorQos: [],
    alarms: { active: [], recent: [], webhooks: [] },
    taskTargets: [],
    drills: [],
  };
  return { ...idle, ...parts } as GatewayStatus;
}
