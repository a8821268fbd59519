// An order the agent's parser refuses fails at the control plane at once, with the agent's reason
// (src/wire/control.ts: a refused request with a usable id is answered `refused` by that id),
// instead of waiting for the answer timeout. The control plane and both receivers are the real
// ones, wired as the local gateway and the agent wire them; the link between them is JSON, and the
// task store is a stand-in that holds a volume whose path the agent cannot accept ('..'; the real
// store refuses such a path at the API, as an agent of another version might refuse a field).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ControlPlane } from "../src/tasks/control-plane.ts";
import type { TaskStore } from "../src/tasks/store.ts";
import type { Host, Volume } from "../src/tasks/model.ts";
import { taskFixture } from "./lib/task-fixture.ts";
import { agentOrders, type AgentReport, agentReports, receiver } from "../src/wire/control.ts";
import { setLogSink } from "../src/log.ts";

setLogSink(() => {});
const t = suite("agent link refusals");

const hosts: Host[] = [{ name: "app1", site: "prod", role: "application", agent: "a1" }];
const volumes: Volume[] = [{ name: "vol0", host: "app1", device: "/dev/../sdb", size: 4096 }];
const task = taskFixture({ sites: [], lspDevice: "/dev/../sdb", state: "configured" });

t("an assign the agent refuses fails the task's start at once with the agent's reason", async () => {
  const store = {
    listTasks: () => Promise.resolve([task]),
    listHosts: () => Promise.resolve(hosts),
    listVolumes: () => Promise.resolve(volumes),
  } as unknown as TaskStore;
  const log = { error: () => {} };
  const toGateway = (m: AgentReport) => queueMicrotask(() => fromAgent("a1", JSON.parse(JSON.stringify(m))));
  const never = () => assert.unreachable("the agent took an order it must refuse");
  const agent = receiver(
    agentOrders,
    {
      assign: never,
      unassign: never,
      fence: never,
      unfence: never,
      "heartbeat-interval": never,
    },
    log,
    (_, id, error) => toGateway({ type: "refused", id, error }),
  );
  const plane = new ControlPlane({
    store,
    send: (_, msg) => {
      queueMicrotask(() => agent("gateway", JSON.parse(JSON.stringify(msg))));
      return true;
    },
    retire: () => Promise.resolve(),
    siteRequest: () => Promise.reject(new Error("no sites here")),
    sites: () => [],
    answerTimeoutMs: 10_000,
  });
  const fromAgent = receiver(agentReports, {
    assigned: (m) => plane.onAnswer(m),
    unassigned: (m) => plane.onAnswer(m),
    refused: (m) => plane.onAnswer(m),
    assignments: () => {},
    devices: () => {},
  }, log);

  const t0 = performance.now();
  const error = await plane.start(task).then(
    (): Error => assert.unreachable("the start succeeded") as never,
    (e: Error) => e,
  );
  const ms = performance.now() - t0;
  console.log(`  refused at the control plane after ${ms.toFixed(1)} ms (answer timeout 10 s)`);
  assert.ok(ms < 1000, `failed after ${Math.round(ms)} ms, not at once`);
  const reason = /"assign" message refused: volumes\.0\.path: must not contain '\.\.'/;
  assert.match(error.message, /^the agent refused the order: agent link \(gateway to agent\): /);
  assert.match(error.message, reason);
  const state = plane.status().find((s) => s.task === "db")!;
  assert.is(state.state, "failed");
  assert.match(String(state.error), reason, "the task's assignment state shows the agent's reason");
  plane.close();
});

t.run();
