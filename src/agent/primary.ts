// A primary agent: it captures its --volume ones and the volumes its gateway assigns, and
// carries out the gateway's orders on the agent link (src/wire/control.ts): assign and
// unassign (AssignedVolumes), fence and unfence, and the heartbeat period.
import { type RoleHandle, str } from "../cli/common.ts";
import { logger } from "../log.ts";
import type { NativeAgent } from "../capture/native-agent.ts";
import type { NbdServer } from "../nbd/server.ts";
import { AssignmentFile } from "../capture/assignments.ts";
import { DeviceReporter } from "../capture/devices.ts";
import { agentOrders, receiver } from "../wire/control.ts";
import { AssignedVolumes } from "./assigned-volumes.ts";
import {
  type AgentContext,
  chunkOp,
  exportCaptured,
  protect,
  runHook,
  serveNbd,
  startDataPlane,
  trackedOf,
} from "./context.ts";

const log = logger("agent");

/** The gateway fences this server (its writes refused): kept across restarts until lifted. */
function fence(c: AgentContext, agent: NativeAgent, reason: string): void {
  agent.fence(reason);
  c.monitor?.endGrace();
  c.state.fence(reason).catch((e) => log.error("cannot persist the fence", { error: e }));
}

/** The gateway lifts the fence (after a recovery or a failback): --on-unfence starts the service. */
function unfence(c: AgentContext, agent: NativeAgent): void {
  const wasFenced = c.state.fenced !== undefined;
  agent.fence(undefined);
  c.state.unfence().then(() => wasFenced ? runHook(c, "on-unfence") : undefined).catch((e) =>
    log.error("--on-unfence failed", { error: e })
  );
}

export async function runPrimary(c: AgentContext): Promise<RoleHandle> {
  let fail!: (e: Error) => void;
  const fatal = new Promise<never>((_, reject) => fail = reject);
  fatal.catch(() => {}); // observed by main
  const agent = startDataPlane(c, {
    onControl: (m) => orders(str(c.p, "gateway"), m),
    onFrame: (f) => {
      // not awaited: a recovery keeps several operations in flight (a scan beside its copies)
      chunkOp(c, agent, f, true, (name) => {
        const pv = prot?.exports.find((e) => e.name === name) ?? assigned.captured(name);
        return pv ? trackedOf(c, pv) : undefined;
      }).catch((e) => log.warn("chunk operation failed", { error: e }));
    },
    onConnected: () => {
      assigned.report();
      devices.connected();
    },
  });
  agent.serveChunkWrites();
  const orders = receiver(
    agentOrders,
    {
      assign: (m) => assigned.assign(m),
      unassign: (m) => assigned.unassign(m),
      fence: (m) => fence(c, agent, m.reason ?? "fenced by the gateway"),
      unfence: () => unfence(c, agent),
      // the gateway's QoS configuration sets the period (its bounds are the schema's)
      "heartbeat-interval": (m) => {
        c.heartbeats?.setInterval(m.etaMs);
        log.info("heartbeat period set by the gateway", { etaMs: m.etaMs });
      },
    },
    log,
    (_, id, error) => agent.sendControl({ type: "refused", id, error }),
  );
  const devices = new DeviceReporter(c.devicePrefixes, (m) => agent.sendControl(m));
  let server: NbdServer | undefined;
  let prot: Awaited<ReturnType<typeof protect>> | undefined;
  const assigned = new AssignedVolumes(
    c,
    agent,
    await AssignmentFile.load(c.dataDir),
    c.volumes.size,
    (e) => fail(e),
  );
  try {
    prot = await protect(c, agent, 0, (e) => fail(e));
    agent.start();
    await prot.ready();
    await assigned.restore();
    server = await serveNbd(c.p, c.dataDir);
    for (const pv of prot.exports) exportCaptured(server, agent, pv);
    assigned.exportThrough(server);
    log.info("agent ready", {
      agent: c.id,
      volumes: [...prot.exports.map((e) => e.name), ...assigned.names()],
      fenced: c.state.fenced ?? null,
    });
    const running = { server, prot };
    return {
      fatal,
      stop: async () => {
        devices.close();
        await assigned.closeAll();
        await running.prot.close(running.server);
        await running.server.close();
        await agent.close();
      },
    };
  } catch (e) {
    devices.close();
    await assigned.closeAll();
    await prot?.close(server);
    await server?.close();
    await agent.close();
    throw e;
  }
}
