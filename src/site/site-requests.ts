// What a remote gateway answers a local site's control requests (src/wire/control.ts, the site
// link): promotion and demotion, failover tests and drills on test copies, its retention and
// points, the state of its copies of a volume, the standby copies the local site wants, and its
// inventory. One handler per request type; each resolves with its answer's body.
import { siteDrill } from "../drills/site.ts";
import type { TestCopies } from "../failover/test-copies.ts";
import type { siteRetention } from "../retention/site.ts";
import { imageDevices, ringDevice } from "../tasks/site-inventory.ts";
import type { Answerers, SiteAnswerBodies, SiteAnswerBody, SiteRequest } from "../wire/control.ts";
import type { Promotion } from "./promotion.ts";
import type { StandbyCopies } from "./standby-copies.ts";
import type { SiteContext } from "./context.ts";
import type { StandbyLink } from "./standby-link.ts";

export interface SiteRequestsOptions extends SiteContext {
  replicaDir: string;
  link: StandbyLink;
  copies: StandbyCopies;
  promotion: Promotion;
  tests: TestCopies;
  points: ReturnType<typeof siteRetention>;
}

export function answerSiteRequests(o: SiteRequestsOptions): Answerers<SiteRequest, SiteAnswerBodies> {
  const { tests, points, link } = o;
  const drills = {
    find: (site: string, id: string) => tests.find(site, id),
    connected: (agent: string) => link.connected(agent),
    ask: link.ask.bind(link),
  };
  return {
    promote: async (m) => {
      await tests.stopAgent(m.agent, "a real failover promotes its standby");
      return await o.promotion.promote(m.agent, m.point);
    },
    demote: (m) => o.promotion.demote(m.agent),
    "drill-up": (m, from) => siteDrill(drills, from, m),
    "drill-down": (m, from) => siteDrill(drills, from, m),
    "test-start": async (m, from) => ({ ok: true, test: await tests.start(from, m) }),
    "test-renew": (m, from) => {
      const test = tests.renew(from, m.test);
      return Promise.resolve(test ? { ok: true, test } : { ok: false, error: `no test ${m.test} here` });
    },
    "test-stop": async (m, from) => ({
      ok: true,
      found: await tests.stop(from, { id: m.test, task: m.task }, `site ${from} ended it`),
    }),
    retention: () => Promise.resolve(points.retentionStatus()),
    point: (m) => Promise.resolve(points.point(m.volume, m.point)),
    points: (m) => Promise.resolve(points.points(m.volume, m.limit)),
    copies: (m) => Promise.resolve(copiesOf(o, m.volume)),
    standbys: (m, from) => o.copies.wanted(from, m.agents),
    inventory: () =>
      Promise.resolve(link.devices.inventory({
        site: o.site,
        connected: link.connectedAgents(),
        journal: ringDevice(o.journal.ring),
        replicaDir: o.replicaDir,
        replicas: imageDevices(o.journal.volumes()),
      })),
  };
}

/** What this site's copies of a volume hold: its replica (RGP) and its standby's (RSP). */
function copiesOf(o: SiteRequestsOptions, key: string): SiteAnswerBody<"copies"> {
  const [agent, name] = key.split("/");
  const v = o.journal.volumes().find((x) => x.agent === agent && x.name === name);
  if (!v) return { ok: false, error: `no volume ${key} here` };
  const state = o.replicas.get(v.id);
  const rgp = {
    // a promoted copy takes the service's own writes: it is the newest consistent copy
    state: state === "empty" || state === "promoted" ? "consistent" : state,
    lastSeq: o.applier.applied(v.id),
    lastTime: o.applier.appliedAt(v.id),
  };
  const fv = o.feeders.volume(agent, v.id);
  const standbyUp = o.link.connected(agent);
  const rsp = o.replicas.promoted.has(agent)
    ? {
      state: standbyUp ? "consistent" : "unreachable",
      lastSeq: v.lastSeq,
      lastTime: o.applier.appliedAt(v.id),
    }
    : fv && standbyUp
    ? { state: fv.state, lastSeq: fv.ackedSeq, lastTime: fv.ackedTime }
    : null;
  return { ok: true, rgp, rsp };
}
