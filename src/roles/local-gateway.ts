// The local gateway role: accepts agents, journals their records (write cache), keeps its own
// mirror of every volume, streams them to the remote sites, detects failures and switches
// services, runs recoveries, and serves the web UI and API. This file is the order things are
// built and started in; each part lives in its module (src/local-gateway/ holds the gateway's
// own wiring).
import type { Parsed } from "../cli/flags.ts";
import { ensurePrivateDir, type RoleHandle } from "../cli/common.ts";
import { logger } from "../log.ts";
import { type Db, openDatabase } from "../db/db.ts";
import { services as servicesTable } from "../db/schema.ts";
import { Journal } from "../journal/journal.ts";
import { MirrorApplier } from "../mirror/applier.ts";
import { GatewayListener } from "../link/gateway-listener.ts";
import { Changes } from "../io/changes.ts";
import { Audit } from "../audit/audit.ts";
import { Alarms } from "../alarms/alarms.ts";
import { openWebhooks } from "../alarms/webhooks.ts";
import { FailoverController } from "../failover/controller.ts";
import { failOverOnFailure, FailureDetection } from "../failover/detection.ts";
import { allCheckpoints } from "../points/points.ts";
import { RetentionWatch } from "../points/watch.ts";
import { Drills } from "../drills/drills.ts";
import { TaskStore } from "../tasks/store.ts";
import type { SiteRequester } from "../wire/control.ts";
import { ControlPlane } from "../tasks/control-plane.ts";
import { FailoverTests } from "../tasks/failover-tests.ts";
import { Discovery } from "../tasks/discovery.ts";
import { imageDevices, ringDevice } from "../tasks/site-inventory.ts";
import { detectionTargets, taskTargets } from "../tasks/targets.ts";
import { testSite, volumeKey } from "../tasks/gateway-actions.ts";
import { gatewayConfig } from "../local-gateway/flags.ts";
import { MirrorStrategies } from "../local-gateway/strategies.ts";
import { RemoteSites } from "../local-gateway/sites.ts";
import { acceptAgents, agentFences } from "../local-gateway/agents.ts";
import { openRecovery } from "../local-gateway/recovery.ts";
import { gatewayFailback } from "../local-gateway/failback.ts";
import { gatewayStatus, watchAlarms } from "../local-gateway/status.ts";
import { startGatewayWeb } from "../local-gateway/web.ts";

export { localGatewayFlags } from "../local-gateway/flags.ts";

const log = logger("local-gateway");

export async function runLocalGateway(p: Parsed): Promise<RoleHandle> {
  const cfg = gatewayConfig(p);
  ensurePrivateDir(cfg.dataDir);
  const { db, close: closeDb } = await openDatabase(cfg.database.url, cfg.database.token);
  const cleanups: (() => Promise<void> | void)[] = [closeDb];
  const stop = async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch (e) {
        log.warn("error while stopping", { error: e });
      }
    }
  };
  try {
    // the write cache: the journal, the mirror it feeds, and the sites it streams to
    const journal = await Journal.open(db, cfg.journal.path, cfg.journal.size, {
      retainBytes: cfg.journal.retainBytes,
      commitDelayMs: cfg.journal.commitDelayMs,
      commitIdleMs: cfg.journal.commitIdleMs,
      maxLagMs: cfg.journal.maxLagMs,
      writeThrough: cfg.journal.writeThrough,
    });
    cleanups.push(() => journal.close());
    // the mirror is the journal applied, not a copy of its own: under writes it is synced to
    // release journal space (an eighth of the ring, or when an append waits for space), else as
    // rarely as the kernel writes dirty pages back anyway; once the writes pause, at once (the
    // journal then empties). The records stay in the ring until their images are synced
    const mirror = new MirrorApplier(journal, {
      syncBytes: journal.ring.dataSize / 8,
      syncIntervalMs: 30_000,
      idleSyncMs: 1000,
    });
    const strategies = new MirrorStrategies(journal);
    const sites = await RemoteSites.open(cfg.remotes, cfg.site, cfg.dataDir, journal, mirror, strategies);
    // before the first session: a site that missed a checkpoint gets it when it connects
    for (const c of await allCheckpoints(db)) sites.checkpoint(c.volume, c);
    mirror.start();
    cleanups.push(() => mirror.stop());
    sites.start();
    cleanups.push(() => sites.close());
    const audit = new Audit(db);
    const alarms = new Alarms({
      site: cfg.site,
      audit,
      webhooks: openWebhooks(cfg.alarms.webhooks, cfg.alarms.secretFile),
    });
    cleanups.push(() => alarms.close());
    const store = new TaskStore(db, cfg.prefixes);

    // the agents' link, taking no agent until everything it reaches exists (acceptAgents below)
    const mirrorPath = (agent: string, volume: string) => `${cfg.mirrorDir}/${agent}/${volume}.img`;
    const listener = GatewayListener.create({
      listen: cfg.listen,
      journal,
      secrets: cfg.secrets,
      mirrorPath,
    });
    cleanups.push(() => listener.close());

    // failure detection and the service switch; the recorded fences hold before any agent connects
    const detection = new FailureDetection(cfg.detector, {
      secrets: cfg.secrets,
      audit,
      alarms,
      targets: () => detectionTargets(store, cfg.services),
      order: (agent, etaMs) => listener.sendControl(agent, { type: "heartbeat-interval", etaMs }),
    });
    cleanups.push(() => detection.close());
    const controller = new FailoverController({
      db,
      audit,
      services: cfg.services,
      promote: (site, agent, point) => sites.promote(site, agent, point),
      ...agentFences(listener),
      unhealthy: (agent) => detection.liveness.unhealthy(agent),
      failedBack: (site, agent) => sites.failedBack(site, agent),
      manageRules: cfg.services.length > 0 || (await hasRecordedRules(db)),
    });
    await controller.start();
    cleanups.push(() => controller.close());
    // a failover that ended just before a restart (or whose service is no longer configured) ends now
    await sites.endFinishedFailovers((agent, site) => controller.away(agent, site));
    if (cfg.autoFailover) {
      detection.liveness.onFailure(failOverOnFailure(controller));
      controller.resumeInterrupted();
    }
    await detection.start(cfg.heartbeat);

    // the tasks: their orders to the agents and sites, what the gateway discovers, tests, points
    const request: SiteRequester = (site, msg, ms) => sites.request(site, msg, ms);
    const control = new ControlPlane({
      store,
      send: (agent, msg) => listener.sendControl(agent, msg),
      retire: (agent, name, retired) => sites.retire(agent, name, retired),
      siteRequest: (site, msg) => request(site, msg, 60_000),
      sites: () => sites.names(),
      applyMirror: (plan) => strategies.apply(plan),
    });
    control.run();
    cleanups.push(() => control.close());
    sites.onLink((site, up) => control.onSite(site, up));
    const tests = new FailoverTests({ store, request });
    cleanups.push(() => tests.close());
    const retention = new RetentionWatch(() => sites.names(), request);
    retention.start();
    cleanups.push(() => retention.close());
    const discovery = new Discovery({
      store,
      site: cfg.site,
      journal: ringDevice(journal.ring),
      mirrors: () => imageDevices(journal.volumes()),
      mirrorPath,
      agents: () => listener.connectedAgents(),
      remotes: () => sites.links(),
      siteRequest: request,
    });
    discovery.run();
    cleanups.push(() => discovery.close());

    // agents and sites connecting wake the recoveries waiting for their copies
    const linked = new Changes();
    sites.onLink((_, up) => up && linked.notify());
    await acceptAgents(listener, { controller, control, discovery, mirror, strategies, sites, linked });
    const recovery = await openRecovery({ db, journal, audit, mirror, sites, controller, listener, linked });
    await recovery.start();
    cleanups.push(() => recovery.stop());

    const drills = new Drills({
      db,
      store,
      audit,
      alarm: (a) => alarms.raise(a),
      tests,
      targets: (t) => taskTargets(t, cfg.services),
      volumeKey: (t) => volumeKey(store, t),
      site: (t, key, requested) => testSite(t, key, { sites: sites.status() }, requested),
      durableSeq: (key) => journal.volumes().find((v) => `${v.agent}/${v.name}` === key)?.durableSeq ?? 0,
      request,
    });
    const targets = watchAlarms(alarms, {
      store,
      services: cfg.services,
      controller,
      sites,
      journal,
      retention,
    });
    const started = performance.now();
    const server = await startGatewayWeb(cfg, {
      db,
      audit,
      store,
      journal,
      sites,
      controller,
      failback: gatewayFailback({
        controller,
        journal,
        listener,
        liveness: detection.liveness,
        recovery,
        sites,
        audit,
      }),
      recovery,
      control,
      discovery,
      tests,
      drills,
      qos: detection.qos,
      status: () =>
        gatewayStatus({
          site: cfg.site,
          listener,
          detection,
          controller,
          control,
          journal,
          mirror,
          sites,
          tests,
          retention,
          alarms,
          drills,
          targets,
        }, started),
    });
    cleanups.push(() => server.close());
    // after the web server: the tests a previous run left end through its audit and events
    await tests.start();
    await drills.start();
    cleanups.push(() => drills.close());
    log.info("local gateway ready", {
      agents: listener.describe(),
      heartbeats: `${cfg.heartbeat.hostname}:${detection.heartbeats.port}`,
      http: server.url,
      journal: journal.ring.path,
    });
    return { stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** Whether a previous run left switch rules recorded (they must be reconciled even with no --service now). */
async function hasRecordedRules(db: Db): Promise<boolean> {
  return (await db.select().from(servicesTable)).some((r) => r.rule !== null);
}
