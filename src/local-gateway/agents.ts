// The local gateway's side of its agents, above the link (src/link/gateway-listener.ts): what an
// agent is told when it connects (its fence, its assignments), where its control messages go
// (the control plane, the discovery), what a volume it opens starts (its mirror image, its
// bound, its sites' streams), and the fences the failover controller sets.
import { logger } from "../log.ts";
import type { GatewayListener } from "../link/gateway-listener.ts";
import type { MirrorApplier } from "../mirror/applier.ts";
import type { FailoverController } from "../failover/controller.ts";
import type { Changes } from "../io/changes.ts";
import type { ControlPlane } from "../tasks/control-plane.ts";
import type { Discovery } from "../tasks/discovery.ts";
import { agentReports, receiver } from "../wire/control.ts";
import type { MirrorStrategies } from "./strategies.ts";
import type { RemoteSites } from "./sites.ts";

const log = logger("local-gateway");

/**
 * Fencing through the agents' link: the data plane refuses the agent's records from now on (a
 * fence set before any agent connects holds from its first session), and a connected agent hears
 * it too.
 */
export function agentFences(listener: GatewayListener): {
  fence: (agent: string, reason: string) => void;
  unfence: (agent: string) => void;
} {
  return {
    fence: (agent, reason) => {
      listener.setFence(agent, reason);
      listener.sendControl(agent, { type: "fence", reason });
    },
    unfence: (agent) => {
      listener.setFence(agent, undefined);
      listener.sendControl(agent, { type: "unfence" });
    },
  };
}

export interface AgentDeps {
  controller: FailoverController;
  control: ControlPlane;
  discovery: Discovery;
  mirror: MirrorApplier;
  strategies: MirrorStrategies;
  sites: RemoteSites;
  /** Notified at every agent's connection (a recovery waiting for its copy looks again). */
  linked: Changes;
}

/** Starts accepting agents, once everything an agent's connection and messages reach exists. */
export async function acceptAgents(listener: GatewayListener, d: AgentDeps): Promise<void> {
  await listener.accept({
    fenced: (agent) => d.controller.isFenced(agent),
    onAgent: (agent) => {
      const reason = d.controller.isFenced(agent);
      if (reason) listener.sendControl(agent, { type: "fence", reason });
      d.linked.notify();
      d.control.onAgent(agent).catch((e) =>
        log.error("cannot send an agent its assignments", { agent, error: e })
      );
    },
    onControl: receiver(agentReports, {
      assigned: (m) => d.control.onAnswer(m),
      unassigned: (m) => d.control.onAnswer(m),
      refused: (m) => d.control.onAnswer(m),
      assignments: (m, agent) => d.control.onAssignments(agent, m.names),
      devices: (m, agent) => d.discovery.onDevices(agent, m.devices),
    }, log),
    onVolume: (v) => {
      d.mirror.prepare(v);
      d.strategies.applyBound(v);
      // an agent reconnecting opens its volumes again: only a volume new to a site restarts its session
      d.sites.volumeOpened(v);
    },
  });
}
