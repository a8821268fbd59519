// The remote gateway's status (its HTTP API's /status): the local sites streaming here, the
// journal, each replica with its state and acknowledgement point, the standby feeders, the
// promoted agents, the failover tests and the retention.
import type { TestCopies } from "../failover/test-copies.ts";
import type { SiteServer } from "../replication/site-link.ts";
import type { Retention } from "../retention/retention.ts";
import type { SiteContext } from "./context.ts";
import type { StandbyLink } from "./standby-link.ts";

export interface SiteStatusOptions extends SiteContext {
  fingerprint: string;
  ackAfter: string;
  link: StandbyLink;
  sites: SiteServer;
  tests: TestCopies;
  retention: Retention;
}

export function siteStatus(o: SiteStatusOptions) {
  const started = performance.now();
  const { journal, applier, retention } = o;
  return () => ({
    role: "remote-gateway",
    site: o.site,
    uptimeMs: Math.round(performance.now() - started),
    ackAfter: o.ackAfter,
    fingerprint: o.fingerprint,
    sites: o.sites.connectedSites(),
    streams: o.sites.receiverStatus(),
    standbyAgents: o.link.connectedAgents(),
    journal: { ...journal.positions, used: journal.positions.head - journal.positions.tail },
    replicas: journal.volumes().map((v) => ({
      id: v.id,
      agent: v.agent,
      name: v.name,
      size: v.size,
      image: v.mirrorPath,
      state: o.replicas.get(v.id),
      ack: o.feeders.ack(v.id),
      lastSeq: v.lastSeq,
      appliedSeq: applier.applied(v.id),
    })),
    standby: o.feeders.status(),
    promoted: [...o.replicas.promoted],
    tests: o.tests.list(),
    retention: {
      windowMs: retention.policy.windowMs,
      maxBytes: retention.policy.maxBytes,
      volumes: retention.status(),
    },
  });
}
