// The local gateway's web server (src/web/web-server.ts) and what it reaches: the tasks' actions
// over the gateway's parts, the service switch, recoveries, drills and recovery points.
import type { SiteRequester } from "../wire/control.ts";
import type { Audit } from "../audit/audit.ts";
import type { Db } from "../db/db.ts";
import type { Drills } from "../drills/drills.ts";
import type { FailoverController } from "../failover/controller.ts";
import type { StartedFailback } from "../failover/failback.ts";
import type { DetectorQos } from "../failover/detector-qos.ts";
import type { Journal } from "../journal/journal.ts";
import type { Address } from "../link/address.ts";
import { checkSitePoint, RecoveryPoints } from "../points/points.ts";
import { PointSearch } from "../points/search.ts";
import type { RecoveryService } from "../recovery/service.ts";
import type { ControlPlane } from "../tasks/control-plane.ts";
import type { Discovery } from "../tasks/discovery.ts";
import type { FailoverTests } from "../tasks/failover-tests.ts";
import { gatewayActions } from "../tasks/gateway-actions.ts";
import type { TaskStore } from "../tasks/store.ts";
import { drillRoutes } from "../web/drill-routes.ts";
import { failoverRoutes } from "../web/failover-routes.ts";
import type { GatewayStatus } from "../web/gateway-status.ts";
import { pointsRoutes } from "../web/points-routes.ts";
import { recoveryRoutes } from "../web/recovery-routes.ts";
import type { TlsFiles } from "../web/status-server.ts";
import { loadOrCreateToken } from "../web/token.ts";
import { startWebServer, type WebServer } from "../web/web-server.ts";
import type { RemoteSites } from "./sites.ts";

export interface WebParts {
  db: Db;
  audit: Audit;
  store: TaskStore;
  journal: Journal;
  sites: RemoteSites;
  controller: FailoverController;
  failback: (name: string) => StartedFailback;
  recovery: RecoveryService;
  control: ControlPlane;
  discovery: Discovery;
  tests: FailoverTests;
  drills: Drills;
  qos: DetectorQos;
  status: () => GatewayStatus;
}

export interface WebFlags {
  dataDir: string;
  http: Address & { transport: "tcp" };
  tls?: TlsFiles;
  adminPasswordFile?: string;
}

export function startGatewayWeb(f: WebFlags, g: WebParts): Promise<WebServer> {
  const { journal, sites, controller } = g;
  const request: SiteRequester = (site, msg, ms) => sites.request(site, msg, ms);
  /** Whether a site holds a recovery point of a volume; rejects with the site's reason. */
  const checkPoint = (site: string, volume: string, point: number | string) =>
    checkSitePoint(request, site, volume, point);
  const lastSeq = (key: string) => journal.volumes().find((v) => `${v.agent}/${v.name}` === key)?.lastSeq;
  return startWebServer({
    listen: f.http,
    tls: f.tls,
    db: g.db,
    audit: g.audit,
    fileToken: loadOrCreateToken(`${f.dataDir}/api-token`),
    adminPasswordFile: f.adminPasswordFile,
    store: g.store,
    actions: gatewayActions({
      store: g.store,
      recovery: g.recovery,
      services: {
        status: () => controller.status(),
        failover: (name, cause, point) => controller.failover(name, cause, {}, point),
        failback: g.failback,
      },
      volumes: () => journal.volumes(),
      checkPoint,
      sites: () => sites.names(),
      control: g.control,
      tests: g.tests,
      copies: () => ({ sites: sites.status() }),
    }),
    followTasks: true,
    discovery: g.discovery,
    recoveries: () => g.recovery.list(),
    status: g.status,
    routes: (app) => {
      failoverRoutes(app, controller, g.failback, async (agent, site, point) => {
        const vols = journal.volumes().filter((v) => v.agent === agent && !v.retired);
        if (vols.length === 0) throw new Error(`no volume of ${agent} is journaled here`);
        for (const v of vols) await checkPoint(site, `${v.agent}/${v.name}`, point);
      });
      recoveryRoutes(app, g.recovery);
      drillRoutes(app, { drills: g.drills, links: () => g.qos.status() });
      const points = new RecoveryPoints({
        db: g.db,
        audit: g.audit,
        request,
        lastSeq,
        mark: (key, c) => sites.checkpoint(key, c),
        linked: (site) => sites.connected(site),
      });
      pointsRoutes(app, {
        store: g.store,
        points,
        search: new PointSearch({ store: g.store, audit: g.audit, tests: g.tests, points }),
      });
    },
  });
}
