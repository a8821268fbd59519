// Failback with its data on the local gateway (src/failover/failback.ts is the procedure): the
// local server must be connected and trusted, the online and final passes are recoveries from
// the site's replica, the site demotes its standby, the controller lifts the fence and removes
// the switch rule.
import type { Audit } from "../audit/audit.ts";
import type { FailoverController } from "../failover/controller.ts";
import { type StartedFailback, startFailback } from "../failover/failback.ts";
import type { Liveness } from "../failover/liveness.ts";
import type { Journal } from "../journal/journal.ts";
import type { GatewayListener } from "../link/gateway-listener.ts";
import type { RecoveryService } from "../recovery/service.ts";
import type { RemoteSites } from "./sites.ts";

export interface FailbackParts {
  controller: FailoverController;
  journal: Journal;
  listener: GatewayListener;
  liveness: Liveness;
  recovery: RecoveryService;
  sites: RemoteSites;
  audit: Audit;
}

/** Starts the failback of a service with its data (refused at once when it cannot start). */
export function gatewayFailback(g: FailbackParts): (name: string) => StartedFailback {
  const { controller, recovery } = g;
  return (name) =>
    startFailback({
      service: (n) => controller.describe(n),
      volumes: (agent) =>
        g.journal.volumes().filter((v) => v.agent === agent).map((v) => `${v.agent}/${v.name}`),
      hostUnready: (agent) =>
        g.listener.connectedAgents().includes(agent)
          ? g.liveness.hostUntrusted(agent)
          : `agent ${agent} is not connected`,
      serviceUnhealthy: (agent) => g.liveness.unhealthy(agent),
      healthChanged: (agent, ms) => g.liveness.changed(agent, ms),
      onlineCopy: (volume, site) => recovery.precopy(volume, { kind: "rgp", site }),
      demote: (site, agent) => g.sites.demote(site, agent),
      finalCopy: async (volume, site) => {
        const { id } = await recovery.request({
          volume,
          mode: "manual",
          strategy: "fast",
          source: { kind: "rgp", site },
          target: "lsp",
        });
        const r = await recovery.settled(id);
        if (r.status !== "done") {
          throw new Error(`the final recovery of ${volume} is ${r.status}: ${r.error}`);
        }
        return { bytesMoved: r.bytesMoved };
      },
      unfence: (agent, cause) => controller.unfence(agent, cause),
      switchBack: (n) => controller.failback(n, "failback with data"),
      record: (e) => g.audit.record(e),
      onPhase: (n, phase) => controller.setPhase(n, phase),
    }, name);
}
