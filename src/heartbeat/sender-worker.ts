// The heartbeat sender's own thread (a Worker): heartbeats leave on time even when
// the agent's event loop is busy with its data path (a loaded agent sent them up to
// 500 ms late, and the detector failed its service over; found by tests/faults/).
// The agent posts its service status every η; if no post arrives for `stallMs`,
// the heartbeats say unhealthy, so a wedged data path is still reported.
import { startHeartbeatSender } from "./channel.ts";
import type { HeartbeatSender } from "./channel.ts";
import type { HeartbeatStatus } from "./codec.ts";

export interface WorkerStart {
  type: "start";
  host: string;
  port: number;
  agentId: string;
  secret: Uint8Array;
  intervalMs: number;
  stallMs: number;
  status: HeartbeatStatus;
}

const scope = self as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
  close(): void;
};
let sender: HeartbeatSender | undefined;
let status: HeartbeatStatus = { healthy: false, detail: "starting" };
let updated = performance.now();

scope.onmessage = async (e: MessageEvent) => {
  const m = e.data as
    | WorkerStart
    | { type: "status"; status: HeartbeatStatus }
    | { type: "interval"; intervalMs: number }
    | { type: "close" };
  if (m.type === "start") {
    status = m.status;
    updated = performance.now();
    sender = startHeartbeatSender({
      host: m.host,
      port: m.port,
      agentId: m.agentId,
      secret: m.secret,
      intervalMs: m.intervalMs,
      getStatus: () => {
        const quiet = performance.now() - updated;
        return quiet > m.stallMs
          ? { healthy: false, detail: `the agent has not answered for ${Math.round(quiet)} ms` }
          : status;
      },
    });
    scope.postMessage({ type: "started", boot: sender.boot });
  } else if (m.type === "status") {
    status = m.status;
    updated = performance.now();
  } else if (m.type === "interval") {
    sender?.setInterval(m.intervalMs);
  } else if (m.type === "close") {
    await sender?.close();
    scope.postMessage({ type: "closed" });
    scope.close();
  }
};
