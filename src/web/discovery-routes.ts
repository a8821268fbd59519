// What the gateway found by itself (src/tasks/discovery.ts), for the inventory page and the task
// wizard:
//   GET /api/discovery             each remote site's last answer, the agents' device reports
//   GET /api/discovery/proposal    a group for a new task (?local= its local center, else this
//                                  gateway's; ?host=&device= of its LSP, else the only free
//                                  one; ?remotes=dr1,dr2, else every --remote site)
// The discovered sites, hosts and devices themselves are in /api/sites, /api/hosts and
// /api/volumes (discovered, lastSeen).
import { NAME_RE } from "../names.ts";
import type { Hono } from "hono";
import { describeIssues, devicePathSchema, type Issue, type PartitionRef } from "../tasks/model.ts";
import type { Discovery } from "../tasks/discovery.ts";
import { HttpError } from "./http.ts";

export function discoveryRoutes(app: Hono, discovery: Pick<Discovery, "status" | "propose">): void {
  app.get("/api/discovery", (c) => c.json(discovery.status()));
  app.get("/api/discovery/proposal", async (c) => {
    const host = c.req.query("host"), device = c.req.query("device"), remotes = c.req.query("remotes");
    const local = c.req.query("local");
    const issues: Issue[] = [];
    if (local !== undefined && !NAME_RE.test(local)) {
      issues.push({ path: "local", message: "must be a site name" });
    }
    if (host !== undefined && !NAME_RE.test(host)) {
      issues.push({ path: "host", message: "must be a host name (1 to 64 of A-Z a-z 0-9 . _ -)" });
    }
    if ((host === undefined) !== (device === undefined)) {
      issues.push({
        path: host === undefined ? "host" : "device",
        message: "goes with host and device both",
      });
    }
    const dev = device === undefined ? undefined : devicePathSchema.safeParse(device);
    if (dev && !dev.success) issues.push({ path: "device", message: dev.error.issues[0].message });
    const sites = remotes?.split(",").filter(Boolean);
    const bad = sites?.find((s) => !NAME_RE.test(s));
    if (bad !== undefined) issues.push({ path: "remotes", message: `"${bad}" is not a site name` });
    if (issues.length) {
      throw new HttpError(400, describeIssues(issues), issues);
    }
    const lsp: PartitionRef | undefined = host && device ? { host, device } : undefined;
    const p = await discovery.propose({ local, lsp, remotes: sites });
    return c.json({
      group: { local: p.local, remotes: p.remotes },
      adopt: p.adopt,
      notes: p.notes,
      complete: p.complete,
    });
  });
}
