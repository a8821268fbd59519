// A task as the store holds it, for tests that need one without an inventory: its LSP on host
// app1, one remote center per site, and `over` laid on top.
import type { Task } from "../../src/tasks/model.ts";

export function taskFixture(over: Partial<Task> & { sites?: string[]; lspDevice?: string } = {}): Task {
  const { sites = ["dr1"], lspDevice = "/dev/sdb", ...rest } = over;
  const ref = { host: "gw", device: "/dev/x" };
  return {
    name: "db",
    description: "",
    group: {
      local: { site: "prod", lsp: { host: "app1", device: lspDevice }, lgp: ref, buffer: ref },
      remotes: sites.map((site) => ({ site, rgp: ref, rsp: ref })),
    },
    mirror: { ackPoint: "lgp", congestion: "block", bandwidthLimit: 0, compression: false },
    recovery: { strategy: "fast", mode: "policy" },
    state: "protected",
    stateSince: 0,
    createdAt: 0,
    updatedAt: 0,
    ...rest,
  };
}
