// The local gateway's failure detection: the agents' heartbeats (a UDP receiver, each one
// authenticated by its agent's secret), the liveness detectors judging them, and the detector
// QoS configuration that derives each agent's heartbeat period and margin from its targets and
// the measured link (src/failover/detector-qos.ts).
import type { Audit } from "../audit/audit.ts";
import type { Alarms } from "../alarms/alarms.ts";
import { type HeartbeatReceiver, startHeartbeatReceiver } from "../heartbeat/channel.ts";
import type { FailoverController } from "./controller.ts";
import { DetectorQos, type TargetSource } from "./detector-qos.ts";
import { type DetectorSettings, type FailureListener, Liveness } from "./liveness.ts";

export interface DetectionDeps {
  /** The secret of each agent allowed to send heartbeats. */
  secrets: Map<string, Uint8Array>;
  audit: Audit;
  alarms: Alarms;
  /** The agents' detection targets (their tasks' and services'). */
  targets: () => Promise<Map<string, TargetSource>>;
  /** Tells an agent its heartbeat period over its control link; false when it is not connected. */
  order: (agent: string, etaMs: number) => boolean;
}

/**
 * The detectors judge nothing until start() receives heartbeats: whoever acts on their verdicts
 * (the failover controller, through onFailure) can be built with them first.
 */
export class FailureDetection {
  readonly qos: DetectorQos;
  readonly liveness: Liveness;
  private receiver: HeartbeatReceiver | undefined;

  constructor(f: DetectorSettings, private readonly d: DetectionDeps) {
    this.qos = new DetectorQos({
      mode: f.mode,
      fixed: { etaMs: f.etaMs, alphaMs: f.alphaMs },
      limits: {
        window: f.window,
        reactionMs: Math.max(5, Math.floor(f.etaMs / 10)),
        // the longest period asked of an agent: the configuration takes the longest period that
        // meets the targets on the link as measured, which on a calm link left a margin α of
        // 13–90 ms (η ≈ 700 ms for a 1.5 s detection), and a later step in the link's delay
        // (+40 ms) was then a false detection before the next measurement (tests/detector-qos-netns)
        maxEtaMs: 500,
      },
      targets: d.targets,
      order: d.order,
      // the QoS configuration probes once started, after the receiver exists
      probe: (peer, nonce) => this.heartbeats.probe(peer, nonce),
      audit: d.audit,
      alarm: (a) => d.alarms.raise(a),
    });
    this.liveness = new Liveness({
      settings: f,
      audit: d.audit,
      onTransition: (agent, t) => this.qos.transition(agent, t),
    });
  }

  /** Receives the agents' heartbeats on `listen` (UDP) and starts judging them. */
  async start(listen: { hostname: string; port: number }): Promise<void> {
    this.receiver = await startHeartbeatReceiver({
      host: listen.hostname,
      port: listen.port,
      secrets: this.d.secrets,
      onHeartbeat: (agent, seq, status, now, meta) =>
        this.liveness.heartbeat(agent, seq, status, now, meta, this.qos.heartbeat(agent, seq, now, meta)),
    });
    this.qos.start();
  }

  /** The heartbeat receiver (its port, its counts), once started. */
  get heartbeats(): HeartbeatReceiver {
    if (!this.receiver) throw new Error("the heartbeats are not received yet (start first)");
    return this.receiver;
  }

  async close(): Promise<void> {
    this.qos.close();
    await this.receiver?.close();
    this.liveness.close();
  }
}

/** --auto-failover: every service of an agent whose host or service failed moves to its site. */
export function failOverOnFailure(controller: FailoverController): FailureListener {
  return (agent, cause, detail) => {
    for (const name of controller.servicesOf(agent)) {
      const why = cause === "host"
        ? `agent ${agent} failed (no heartbeats)`
        : `service of ${agent} failed its checks`;
      controller.failoverAutomatically(name, why, detail);
    }
  };
}
