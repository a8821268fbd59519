// The control plane across a remote site: the standby copies (RSP) are desired state, sent to
// the site on every (re)connection and change and reconciled by the site with its standby on
// every (re)connection. A standby that restarts having lost its assignments, and a remote
// gateway that restarts (losing what it was told), get the copy back and the replica and the
// standby converge; a task deleted while the site and its standby are away has its standby copy
// unassigned when they are back; the status lists every task's LSP and RSP assignment.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { waitFor } from "./lib/cluster.ts";
import { type Assignment, startLab } from "./lib/control-plane-lab.ts";

const t = suite("control-plane-sites");

t("standby copies are reconciled when a standby or its site comes back", async () => {
  if (!need("control plane with real processes", { tools: ["qemu-io"] })) return;
  const lab = await startLab("cp-sites");
  const { c, remote, standby } = lab;
  const rspOf = async (): Promise<Assignment | undefined> =>
    (await lab.assignments()).find((a) => a.task === "db" && a.kind === "rsp");
  try {
    await lab.createTask("db");
    await c.expect(200, "POST", "/api/tasks/db/actions/start");
    await waitFor(
      async () => (await lab.taskState("db")) === "protected",
      60_000,
      "the task to be protected",
      250,
    );
    // the status lists both copies of the task, acknowledged by their holders
    const list = await lab.assignments();
    assert.equal(
      list.filter((a) => a.task === "db").map((a) => [a.kind, a.site ?? null, a.agent, a.volume, a.state])
        .sort(),
      [["lsp", null, "a1", "vol0", "assigned"], ["rsp", "dr1", "a1", "vol0", "assigned"]],
    );
    await lab.write("write -P 0x6b 0 4M");
    await lab.siteCaughtUp("the site to acknowledge the first write");
    await lab.allEqual("every copy to hold the first write");

    // a standby that lost its assignments while stopped gets its copy back; meanwhile the
    // status says the RSP is pending, with the reason
    await standby.proc.stop();
    await waitFor(
      async () => (await rspOf())?.state === "pending",
      20_000,
      "the status to show the RSP pending",
      250,
    );
    assert.match((await rspOf())!.error!, /standby agent a1 is not connected to site dr1/);
    await Deno.remove(`${standby.home}/assignments.json`);
    await lab.write("write -P 0x2d 4M 2M");
    await standby.start();
    await waitFor(
      async () => (await lab.standbyRemembers()).includes("vol0"),
      30_000,
      "the standby's copy back",
    );
    await waitFor(
      async () => (await rspOf())?.state === "assigned",
      20_000,
      "the RSP acknowledged again",
      250,
    );
    await lab.siteCaughtUp("the site to catch up after the standby's restart");
    await lab.allEqual("the standby to converge after its restart");

    // the remote gateway restarts (it forgets what it was told) while the standby, stopped too,
    // loses its assignments again: the local site tells the site again when it reconnects
    await standby.proc.stop();
    await remote.proc.stop();
    await Deno.remove(`${standby.home}/assignments.json`);
    await lab.write("write -P 0x5a 8M 2M");
    await remote.start();
    await standby.start();
    await waitFor(
      async () => (await lab.standbyRemembers()).includes("vol0"),
      30_000,
      "the copy after the site's restart",
    );
    await lab.siteCaughtUp("the site to catch up after its restart");
    await lab.allEqual("every copy to converge after the site's restart");

    // deleted while the site and its standby are away: the standby forgets its copy once back
    await standby.proc.stop();
    await remote.proc.stop();
    await c.expect(200, "POST", "/api/tasks/db/actions/pause", {});
    await c.expect(200, "DELETE", "/api/tasks/db");
    assert.equal(
      (await lab.assignments()).filter((a) => a.task === "db"),
      [],
      "no assignment left in the status",
    );
    assert.equal(await lab.standbyRemembers(), ["vol0"], "the standby was away: it still remembers");
    await remote.start();
    await standby.start();
    await waitFor(
      async () => (await lab.standbyRemembers()).length === 0,
      30_000,
      "the missed unassignment delivered",
    );
    // its log line arrives through a pipe, possibly after the file changed
    await waitFor(
      () => standby.proc.records().some((r) => r.msg === "standby copy unassigned: its data left in place"),
      5_000,
      "the standby's log of the unassignment",
    );
    const copy = await Deno.stat(lab.rsp);
    assert.ok(copy.size > 0, "the standby's data stays in place");
  } finally {
    await lab.stop();
  }
});

t.run();
