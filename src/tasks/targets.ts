// Where a task's QoS targets come from: its own (API, wizard), else those given with its
// --service on the command line; and the detection targets of each agent, the strictest of its
// started tasks' and services'.
import type { ServiceConfig } from "../failover/controller.ts";
import { strictest, type TargetSource } from "../failover/detector-qos.ts";
import { lspAssignment } from "./control-plane.ts";
import type { Targets, Task } from "./model.ts";
import type { TaskStore } from "./store.ts";

/** A task's targets: each of its own, else its service's. */
export function taskTargets(task: Task, services: readonly ServiceConfig[]): Targets {
  const s = services.find((x) => x.name === task.service)?.targets ?? {};
  const t = task.targets ?? {};
  const out: Targets = {};
  const detection = t.detection ?? s.detection, rtoMs = t.rtoMs ?? s.rtoMs, rpoMs = t.rpoMs ?? s.rpoMs;
  if (detection) out.detection = detection;
  if (rtoMs !== undefined) out.rtoMs = rtoMs;
  if (rpoMs !== undefined) out.rpoMs = rpoMs;
  return out;
}

/** The detection targets per agent: of the started tasks on its LSP and of the services it runs. */
export async function detectionTargets(
  store: TaskStore | undefined,
  services: readonly ServiceConfig[],
): Promise<Map<string, TargetSource>> {
  const out = new Map<string, TargetSource>();
  for (const s of services) {
    if (s.targets?.detection) {
      out.set(
        s.agent,
        strictest(out.get(s.agent), { targets: s.targets.detection, from: [`service ${s.name}`] }),
      );
    }
  }
  if (!store) return out;
  const tasks = (await store.listTasks()).filter((t) => t.state !== "configured" && t.targets?.detection);
  if (tasks.length === 0) return out;
  const [hosts, volumes] = await Promise.all([store.listHosts(), store.listVolumes()]);
  for (const t of tasks) {
    const lsp = lspAssignment(t, hosts, volumes);
    if (typeof lsp === "string") continue;
    out.set(
      lsp.agent,
      strictest(out.get(lsp.agent), { targets: t.targets!.detection!, from: [`task ${t.name}`] }),
    );
  }
  return out;
}
