// Failover drills, the remote center's half: for a running failover test of this site, the local
// site asks that the service be brought up on the test copy (`drill-up`) and stopped again
// (`drill-down`); the standby agent of the copy's volume does it (src/drills/standby.ts) and
// answers, which goes back to the local site.
import type { TestCopy } from "../failover/test-copies.ts";
import type { DrillOrder, SiteAnswerBody, SiteRequest, Unsent } from "../wire/control.ts";

export interface SiteDrillDeps {
  /** The running test with this id, if it is `site`'s. */
  find(site: string, id: string): TestCopy | undefined;
  connected(agent: string): boolean;
  /** Sends an order to a standby agent and waits (bounded by timeoutMs) for its answer. */
  ask(agent: string, order: Unsent<DrillOrder>, timeoutMs: number): Promise<
    { ok?: boolean; error?: string; checkMs?: number }
  >;
}

/** Handles a local site's `drill-up` or `drill-down` request. */
export async function siteDrill(
  d: SiteDrillDeps,
  from: string,
  m: Unsent<Extract<SiteRequest, { type: "drill-up" | "drill-down" }>>,
): Promise<SiteAnswerBody<"drill-up">> {
  const copy = d.find(from, m.test);
  if (!copy) return { ok: false, error: `no failover test ${m.test} of site ${from} here` };
  const [agent, volume] = copy.volume.split("/");
  if (!d.connected(agent)) return { ok: false, error: `the standby agent ${agent} is not connected` };
  if (m.type === "drill-up") {
    const timeoutMs = Math.min(600_000, Math.max(1000, m.timeoutMs || 60_000));
    const r = await d.ask(
      agent,
      { type: "drill-up", export: copy.export, volume, timeoutMs },
      timeoutMs + 10_000,
    );
    return { ok: r.ok === true, ...(r.error ? { error: r.error } : {}), checkMs: r.checkMs ?? null };
  }
  const r = await d.ask(agent, { type: "drill-down", export: copy.export, volume }, 75_000);
  return { ok: r.ok === true, ...(r.error ? { error: r.error } : {}) };
}
