// The local gateway role: accepts agents, journals their records (write cache),
// keeps its own mirror of every volume, and serves status over HTTP.
import type { FlagSpec, Parsed } from "../cli/flags.ts";
import { parseSize, UsageError } from "../cli/flags.ts";
import { ensurePrivateDir, list, num, optStr, pairs, type RoleHandle, str } from "../cli/common.ts";
import { logger } from "../log.ts";
import { openDatabase } from "../db/db.ts";
import { Journal, type VolumeInfo } from "../journal/journal.ts";
import { MirrorApplier } from "../mirror/applier.ts";
import { GatewayListener } from "../link/gateway-listener.ts";
import { type Address, parseAddress } from "../link/address.ts";
import { readSecretFile } from "../wire/secret-file.ts";
import { startWebServer } from "../web/web-server.ts";
import type { GatewayStatus } from "../web/gateway-status.ts";
import { gatewayActions } from "../tasks/gateway-actions.ts";
import { TaskStore } from "../tasks/store.ts";
import { ControlPlane, type MirrorPlan, siteLimit } from "../tasks/control-plane.ts";
import { agentReports, receiver, type SiteRequester } from "../wire/control.ts";
import { FailoverTests } from "../tasks/failover-tests.ts";
import { Discovery } from "../tasks/discovery.ts";
import { imageDevices, ringDevice } from "../tasks/site-inventory.ts";
import type { Mirror } from "../tasks/model.ts";
import { loadOrCreateToken } from "../web/token.ts";
import { loadIdentity, parseFingerprint } from "../transport/identity.ts";
import { Audit } from "../audit/audit.ts";
import { FailoverController } from "../failover/controller.ts";
import { Liveness } from "../failover/liveness.ts";
import { parseService } from "../failover/service-spec.ts";
import { startHeartbeatReceiver } from "../heartbeat/channel.ts";
import { failoverRoutes } from "../web/failover-routes.ts";
import { recoveryRoutes } from "../web/recovery-routes.ts";
import { pointsRoutes } from "../web/points-routes.ts";
import { allCheckpoints, checkSitePoint, RecoveryPoints } from "../points/points.ts";
import { PointSearch } from "../points/search.ts";
import { RetentionWatch } from "../points/watch.ts";
import { type CopyInfo, RecoveryService, type SourceRef } from "../recovery/service.ts";
import { FileChunks, relinking } from "../recovery/chunk-ops.ts";
import { type Part, union } from "../recovery/divergence.ts";
import { volumes as volumesTable } from "../db/schema.ts";
import { eq } from "drizzle-orm";
import { serialized } from "../db/db.ts";
import { services as servicesTable } from "../db/schema.ts";
import { failback, type FailbackDeps } from "../failover/failback.ts";
import type { Db } from "../db/db.ts";
import { CursorStore } from "../replication/cursor-store.ts";
import { Sender } from "../replication/sender.ts";
import { SiteClient } from "../replication/site-link.ts";
import { DetectorQos } from "../failover/detector-qos.ts";
import { Alarms } from "../alarms/alarms.ts";
import { openWebhooks } from "../alarms/webhooks.ts";
import { Drills } from "../drills/drills.ts";
import { detectionTargets, taskTargets } from "../tasks/targets.ts";
import { testSite, volumeKey } from "../tasks/gateway-actions.ts";
import { drillRoutes } from "../web/drill-routes.ts";

const log = logger("local-gateway");

export const localGatewayFlags: FlagSpec[] = [
  { name: "id", type: "string", description: "name of this site", default: "local" },
  {
    name: "data-dir",
    type: "string",
    description: "state directory (database, journal, mirrors, API token)",
    default: "/var/lib/continuum/gateway",
    placeholder: "DIR",
  },
  {
    name: "agent-listen",
    type: "string",
    multiple: true,
    description: "where agents connect (HOST:PORT or unix:PATH)",
    default: ["127.0.0.1:7800"],
    placeholder: "ADDR",
  },
  {
    name: "agent-secret",
    type: "string",
    multiple: true,
    description: "an agent allowed to connect and the file holding its secret",
    placeholder: "NAME=FILE",
  },
  {
    name: "database",
    type: "string",
    description: "libsql database URL (file:PATH or libsql://…) [default: file:DATA-DIR/gateway.db]",
    placeholder: "URL",
  },
  {
    name: "database-token",
    type: "string",
    description: "auth token for a libsql server URL",
    placeholder: "TOKEN",
  },
  {
    name: "buffer",
    type: "string",
    description: "journal buffer file or device [default: DATA-DIR/journal.ring]",
    placeholder: "PATH",
  },
  {
    name: "buffer-size",
    type: "size",
    description: "journal buffer size when it is a file created here",
    default: "1G",
  },
  {
    name: "retain",
    type: "size",
    description: "journal bytes kept after every reader is done with them",
    default: "0",
  },
  {
    name: "commit-delay",
    type: "duration",
    description: "longest wait before an unforced group commit",
    default: "100ms",
  },
  {
    name: "max-lag",
    type: "duration",
    description:
      "replication lag bound: the agents' writes wait while a connected, caught-up site is further behind (0: none)",
    default: "0",
  },
  {
    name: "remote",
    type: "string",
    multiple: true,
    description: "a remote site to replicate to",
    placeholder: "NAME=HOST:PORT",
  },
  {
    name: "remote-fingerprint",
    type: "string",
    multiple: true,
    description: "the pinned key fingerprint of a remote site (from its `continuum keygen`)",
    placeholder: "NAME=FINGERPRINT",
  },
  {
    name: "key-dir",
    type: "string",
    description:
      "this site's key pair for remote sites (made by `continuum keygen`) [default: DATA-DIR/keys]",
    placeholder: "DIR",
  },
  {
    name: "remote-bandwidth",
    type: "string",
    multiple: true,
    description: "most bytes per second to a remote site (e.g. 50M)",
    placeholder: "NAME=RATE",
  },
  {
    name: "congestion",
    type: "string",
    description:
      "when a slow site fills the journal: block the writers, or pull ahead (track its missed chunks, copy them later)",
    choices: ["block", "pull-ahead"],
    default: "block",
  },
  {
    name: "window",
    type: "size",
    description: "bytes in flight to one remote site before waiting for acknowledgements",
    default: "256M",
  },
  {
    name: "sync-chunk",
    type: "size",
    description: "chunk size of the differential synchronisation of a replica",
    default: "1M",
  },
  {
    name: "service",
    type: "string",
    multiple: true,
    description: "a protected service and where it fails over to",
    placeholder: "NAME=agent:A,address:IP:PORT,site:S,target:IP:PORT[,protocol:udp]",
  },
  {
    name: "auto-failover",
    type: "boolean",
    description: "fail services over by themselves on FAILURE (otherwise only `continuum ctl failover`)",
    default: true,
  },
  {
    name: "heartbeat-listen",
    type: "string",
    description: "UDP address for agents' heartbeats",
    default: "127.0.0.1:7810",
    placeholder: "ADDR",
  },
  {
    name: "detector",
    type: "string",
    description: "failure detector: Chen–Toueg–Aguilera freshness points, or φ accrual",
    choices: ["chen", "phi"],
    default: "chen",
  },
  {
    name: "heartbeat-interval",
    type: "duration",
    description: "the agents' heartbeat period η",
    default: "100ms",
  },
  {
    name: "detector-alpha",
    type: "duration",
    description: "safety margin α after the expected arrival (chen)",
    default: "200ms",
  },
  {
    name: "detector-window",
    type: "number",
    description: "heartbeats the estimate averages (n)",
    default: 100,
  },
  { name: "phi-suspect", type: "number", description: "φ at which an agent is suspected (phi)", default: 5 },
  { name: "phi-failure", type: "number", description: "φ at which an agent has failed (phi)", default: 12 },
  {
    name: "alarm-webhook",
    type: "string",
    multiple: true,
    description: "a URL alarms are POSTed to as signed JSON (with --alarm-secret-file)",
    placeholder: "URL",
  },
  {
    name: "alarm-secret-file",
    type: "string",
    description: "the secret (mode 0600) alarm webhooks are signed with (HMAC-SHA256)",
    placeholder: "FILE",
  },
  {
    name: "mirror-dir",
    type: "string",
    description: "directory of the gateway's mirror images [default: DATA-DIR/mirrors]",
    placeholder: "DIR",
  },
  {
    name: "http-listen",
    type: "string",
    description: "HTTP API address (HOST:PORT, port 0 picks one)",
    default: "127.0.0.1:7880",
    placeholder: "ADDR",
  },
  {
    name: "tls-cert",
    type: "string",
    description: "certificate chain (PEM) for HTTPS on --http-listen (with --tls-key)",
    placeholder: "FILE",
  },
  {
    name: "tls-key",
    type: "string",
    description: "private key (PEM, mode 0600) of --tls-cert",
    placeholder: "FILE",
  },
  {
    name: "device-prefix",
    type: "string",
    multiple: true,
    description: "a directory the web UI's volumes may name devices in (the allowed device list)",
    default: ["/dev/"],
    placeholder: "DIR",
  },
  {
    name: "admin-password-file",
    type: "string",
    description:
      "first start only: create the web user admin with this file's password (mode 0600); without it a one-time setup link is printed",
    placeholder: "FILE",
  },
];

export async function runLocalGateway(p: Parsed): Promise<RoleHandle> {
  const dataDir = str(p, "data-dir");
  ensurePrivateDir(dataDir);
  const secrets = new Map<string, Uint8Array>();
  for (const [agent, file] of pairs("agent-secret", p["agent-secret"])) {
    secrets.set(agent, readSecretFile(file));
  }
  if (secrets.size === 0) log.warn("no --agent-secret given: no agent can connect");
  const listen = list(p, "agent-listen").map((a) => parseAddress(a));
  const http = parseAddress(str(p, "http-listen"));
  if (http.transport !== "tcp") throw new UsageError("--http-listen must be HOST:PORT");
  const mirrorDir = optStr(p, "mirror-dir") ?? `${dataDir}/mirrors`;

  const { db, close: closeDb } = await openDatabase(
    optStr(p, "database") ?? `file:${dataDir}/gateway.db`,
    optStr(p, "database-token"),
  );
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
    const journal = await Journal.open(
      db,
      optStr(p, "buffer") ?? `${dataDir}/journal.ring`,
      num(p, "buffer-size"),
      {
        retainBytes: num(p, "retain"),
        commitDelayMs: num(p, "commit-delay"),
        maxLagMs: num(p, "max-lag"),
      },
    );
    cleanups.push(() => journal.close());
    const mirror = new MirrorApplier(journal);
    // the tasks' mirror strategies (M), per AGENT/NAME: they win over the flags for their volumes
    const strategy: { plan: MirrorPlan; cp?: ControlPlane } = { plan: { volumes: {}, siteBandwidth: {} } };
    const policyOf = (v: VolumeInfo): Mirror | undefined => strategy.plan.volumes[`${v.agent}/${v.name}`];
    // senders are opened before the mirror applier moves: their stored positions hold the journal
    const remotes = await openRemotes(p, dataDir, journal, mirror, {
      policyOf,
      onLink: (site, up) => strategy.cp?.onSite(site, up),
    });
    /** A named checkpoint goes in every site's stream, right after the record it names. */
    const markCheckpoint = (key: string, c: { name: string; seq: number }) => {
      const v = journal.volumes().find((x) => `${x.agent}/${x.name}` === key);
      if (v) { for (const r of remotes) r.sender.checkpoint(v.id, c.name, c.seq); }
    };
    // before the first session: a site that missed a checkpoint gets it when it connects
    for (const c of await allCheckpoints(db)) markCheckpoint(c.volume, c);
    mirror.start();
    cleanups.push(() => mirror.stop());
    for (const r of remotes) {
      r.client.start();
      cleanups.push(() => r.client.close());
    }
    const audit = new Audit(db);
    const alarms = new Alarms({
      site: str(p, "id"),
      audit,
      webhooks: openWebhooks(list(p, "alarm-webhook"), optStr(p, "alarm-secret-file")),
    });
    cleanups.push(() => alarms.close());
    const configs = [...pairs("service", p["service"])].map(([name, spec]) => {
      try {
        return parseService(name, spec);
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
    });
    for (const c of configs) {
      if (!remotes.some((r) => r.site === c.site)) {
        throw new UsageError(`--service ${c.name}: no --remote ${c.site} given`);
      }
      if (!secrets.has(c.agent)) {
        throw new UsageError(`--service ${c.name}: no --agent-secret ${c.agent} given`);
      }
    }
    // fencing goes through the listener once it exists (the controller starts first to reconcile rules)
    const agentsIn: { listener?: GatewayListener } = {};
    const controller = new FailoverController({
      db,
      audit,
      services: configs,
      promote: async (site, agent, point) => {
        const r = remotes.find((x) => x.site === site)!;
        // from the promotion the site drops this gateway's records (acknowledged): the sender keeps what it lacks
        await r.sender.failedOver(agent);
        // a rollback to a point rebuilds the standby's differing chunks first: give it time
        const answer = await r.client.request(
          { type: "promote", agent, ...(point === undefined ? {} : { point }) },
          point === undefined ? 90_000 : 900_000,
        );
        if (answer.ok !== true) {
          throw new Error(`site ${site} could not promote ${agent}: ${answer.error ?? "no reason given"}`);
        }
      },
      fence: (agent, reason) => {
        agentsIn.listener?.setFence(agent, reason);
        agentsIn.listener?.sendControl(agent, { type: "fence", reason });
      },
      unfence: (agent) => {
        agentsIn.listener?.setFence(agent, undefined);
        agentsIn.listener?.sendControl(agent, { type: "unfence" });
      },
      // called on failback, once the detectors below exist
      unhealthy: (agent) => liveness.unhealthy(agent),
      failedBack: async (site, agent) => await remotes.find((x) => x.site === site)?.sender.failedBack(agent),
      manageRules: configs.length > 0 || (await hasRecordedRules(db)),
    });
    await controller.start();
    cleanups.push(() => controller.close());
    if (p["auto-failover"] === true) controller.resumeInterrupted();
    // a failover that ended just before a restart (or whose service is no longer configured) ends now
    for (const r of remotes) {
      for (const agent of r.sender.promotedAgents()) {
        if (!controller.away(agent, r.site)) await r.sender.failedBack(agent);
      }
    }
    const plane0: { store?: TaskStore } = {};
    const qos = new DetectorQos({
      mode: str(p, "detector") as "chen" | "phi",
      fixed: { etaMs: num(p, "heartbeat-interval"), alphaMs: num(p, "detector-alpha") },
      limits: {
        window: num(p, "detector-window"),
        reactionMs: Math.max(5, Math.floor(num(p, "heartbeat-interval") / 10)),
      },
      // the store comes with the web server below; until then only the --service targets count
      targets: () => detectionTargets(plane0.store, configs),
      order: (agent, etaMs) =>
        agentsIn.listener?.sendControl(agent, { type: "heartbeat-interval", etaMs }) ?? false,
      probe: (peer, nonce) => heartbeats.probe(peer, nonce),
      audit,
      alarm: (a) => alarms.raise(a),
    });
    const liveness = new Liveness({
      settings: {
        mode: str(p, "detector") as "chen" | "phi",
        etaMs: num(p, "heartbeat-interval"),
        alphaMs: num(p, "detector-alpha"),
        window: num(p, "detector-window"),
        phiSuspect: num(p, "phi-suspect"),
        phiFailure: num(p, "phi-failure"),
      },
      audit,
      onTransition: (agent, t) => qos.transition(agent, t),
      onFailure: (agent, cause, detail) => {
        if (p["auto-failover"] !== true) return;
        for (const name of controller.servicesOf(agent)) {
          const why = cause === "host"
            ? `agent ${agent} failed (no heartbeats)`
            : `service of ${agent} failed its checks`;
          controller.failoverAutomatically(name, why, detail);
        }
      },
    });
    cleanups.push(() => liveness.close());
    const hb = parseAddress(str(p, "heartbeat-listen"));
    if (hb.transport !== "tcp") throw new UsageError("--heartbeat-listen must be HOST:PORT");
    const heartbeats = await startHeartbeatReceiver({
      host: hb.hostname,
      port: hb.port,
      secrets,
      onHeartbeat: (agent, seq, status, now, meta) =>
        liveness.heartbeat(agent, seq, status, now, meta, qos.heartbeat(agent, seq, now, meta)),
    });
    cleanups.push(() => heartbeats.close());
    qos.start();
    cleanups.push(() => qos.close());
    // the control plane and the discovery need the task store, which comes with the web server below
    const plane: { cp?: ControlPlane; discovery?: Discovery } = {};
    const mirrorPath = (agent: string, volume: string) => `${mirrorDir}/${agent}/${volume}.img`;
    const listener = await GatewayListener.listen({
      listen,
      journal,
      secrets,
      mirrorPath,
      onAgent: (agent) => {
        const reason = controller.isFenced(agent);
        if (reason) agentsIn.listener?.sendControl(agent, { type: "fence", reason });
        plane.cp?.onAgent(agent).catch((e) =>
          log.error("cannot send an agent its assignments", { agent, error: e })
        );
      },
      onControl: receiver(agentReports, {
        assigned: (m) => plane.cp?.onAnswer(m),
        unassigned: (m) => plane.cp?.onAnswer(m),
        refused: (m) => plane.cp?.onAnswer(m),
        assignments: (m, agent) => plane.cp?.onAssignments(agent, m.names),
        devices: (m, agent) => plane.discovery?.onDevices(agent, m.devices),
      }, log),
      fenced: (agent) => controller.isFenced(agent),
      onVolume: (v) => {
        mirror.prepare(v);
        journal.setBound(v.id, policyOf(v)?.bufferBound);
        // an agent reconnecting opens its volumes again: only a volume new to a site restarts its session
        for (const r of remotes) if (r.sender.volumeAdded(v)) r.client.reannounce();
      },
    });
    agentsIn.listener = listener;
    cleanups.push(() => listener.close());
    const recovery = await openRecovery(db, journal, audit, mirror, remotes, controller, listener);
    await recovery.start();
    cleanups.push(() => recovery.stop());
    const failbackDeps: FailbackDeps = {
      service: (name) => controller.describe(name),
      volumes: (agent) =>
        journal.volumes().filter((v) => v.agent === agent).map((v) => `${v.agent}/${v.name}`),
      hostUnready: (agent) =>
        listener.connectedAgents().includes(agent)
          ? liveness.hostUntrusted(agent)
          : `agent ${agent} is not connected`,
      serviceUnhealthy: (agent) => liveness.unhealthy(agent),
      onlineCopy: (volume, site) => recovery.precopy(volume, { kind: "rgp", site }),
      demote: async (site, agent) => {
        const r = remotes.find((x) => x.site === site)!;
        const answer = await r.client.request({ type: "demote", agent }, 90_000);
        if (answer.ok !== true) {
          throw new Error(`site ${site} could not demote ${agent}: ${answer.error ?? "no reason given"}`);
        }
      },
      finalCopy: async (volume, site) => {
        const { id } = await recovery.request({
          volume,
          mode: "manual",
          strategy: "fast",
          source: { kind: "rgp", site },
          target: "lsp",
        });
        const r = await recovery.settled(id);
        if (r.status !== "done") {
          throw new Error(`the final recovery of ${volume} is ${r.status}: ${r.error}`);
        }
        return { bytesMoved: r.bytesMoved };
      },
      unfence: (agent, cause) => controller.unfence(agent, cause),
      switchBack: (name) => controller.failback(name, "failback with data"),
      record: (e) => audit.record(e),
      onPhase: (name, phase) => controller.setPhase(name, phase),
    };
    const token = loadOrCreateToken(`${dataDir}/api-token`);
    const started = performance.now();
    const tlsCert = optStr(p, "tls-cert"), tlsKey = optStr(p, "tls-key");
    if ((tlsCert === undefined) !== (tlsKey === undefined)) {
      throw new UsageError("--tls-cert and --tls-key go together");
    }
    const prefixes = list(p, "device-prefix");
    for (const d of prefixes) {
      if (!d.startsWith("/") || d.split("/").includes("..")) {
        throw new UsageError(`--device-prefix ${d}: must be an absolute directory without '..'`);
      }
    }
    const store = new TaskStore(db, prefixes);
    plane0.store = store;
    const siteRequest: SiteRequester = (site, msg, timeoutMs) => {
      const r = remotes.find((x) => x.site === site);
      if (!r) return Promise.reject(new Error(`no --remote ${site} on this gateway`));
      return r.client.request(msg, timeoutMs);
    };
    const control = new ControlPlane({
      store,
      send: (agent, msg) => listener.sendControl(agent, msg),
      retire: async (agent, name, retired) => {
        const v = journal.volumes().find((x) => x.agent === agent && x.name === name);
        if (!v) return; // never opened: nothing of it is journaled or sent
        await journal.retire(v.id, retired);
        // the records durable now are in the mirror image once it caught up: a resumed site's
        // synchronisation reads its chunks from there
        const imageSeq = v.durableSeq;
        if (!retired) await mirror.caughtUp();
        for (const r of remotes) {
          if (retired) r.sender.volumeRetired(v.id);
          else r.sender.volumeResumed(v, imageSeq);
        }
      },
      siteRequest: (site, msg) => siteRequest(site, msg, 60_000),
      sites: () => remotes.map((r) => r.site),
      applyMirror: (plan) => {
        // what the hello announces per volume: its acknowledgement point and its retention
        const acks = (pl: MirrorPlan) =>
          JSON.stringify(
            journal.volumes().map((v) => {
              const m = pl.volumes[`${v.agent}/${v.name}`];
              return [m?.ackPoint, m?.retentionHours, m?.retentionBytes];
            }),
          );
        const ackChanged = acks(plan) !== acks(strategy.plan);
        strategy.plan = plan;
        for (const v of journal.volumes()) journal.setBound(v.id, policyOf(v)?.bufferBound);
        for (const r of remotes) {
          r.sender.setBandwidth(siteLimit(r.bandwidth, plan.siteBandwidth[r.site]));
          // acknowledgement points travel in the hello: a new session announces them
          if (ackChanged) r.client.reannounce();
        }
        log.info("mirror strategies applied", { volumes: Object.keys(plan.volumes).length });
      },
    });
    plane.cp = control;
    strategy.cp = control;
    control.run();
    cleanups.push(() => control.close());
    for (const r of remotes) if (r.client.connected) control.onSite(r.site, true);
    const tests = new FailoverTests({ store, request: siteRequest });
    /** Whether a site holds a recovery point of a volume; rejects with the site's reason. */
    const checkPoint = (site: string, volume: string, point: number | string) =>
      checkSitePoint(siteRequest, site, volume, point);
    cleanups.push(() => tests.close());
    const retention = new RetentionWatch(() => remotes.map((r) => r.site), siteRequest);
    retention.start();
    cleanups.push(() => retention.close());
    const discovery = new Discovery({
      store,
      site: str(p, "id"),
      journal: ringDevice(journal.ring),
      mirrors: () => imageDevices(journal.volumes()),
      mirrorPath,
      agents: () => listener.connectedAgents(),
      remotes: () => remotes.map((r) => ({ site: r.site, connected: r.client.connected })),
      siteRequest,
    });
    plane.discovery = discovery;
    discovery.run();
    cleanups.push(() => discovery.close());
    const siteStatus = () =>
      remotes.map((r) => ({
        site: r.site,
        lastError: r.client.lastError || null,
        ...r.sender.status(),
      }));
    const drills = new Drills({
      db,
      store,
      audit,
      alarm: (a) => alarms.raise(a),
      tests,
      targets: (t) => taskTargets(t, configs),
      volumeKey: (t) => volumeKey(store, t),
      site: (t, key, requested) => testSite(t, key, { sites: siteStatus() }, requested),
      durableSeq: (key) => journal.volumes().find((v) => `${v.agent}/${v.name}` === key)?.durableSeq ?? 0,
      request: siteRequest,
    });
    // the tasks' targets as last read for the alarms, shown by the status and /metrics
    let targetsSeen: { task: string; rtoMs?: number; rpoMs?: number; sites: string[] }[] = [];
    alarms.watch(async () => {
      const tasks = await store.listTasks();
      targetsSeen = tasks.map((t) => {
        const { rtoMs, rpoMs } = taskTargets(t, configs);
        return { task: t.name, rtoMs, rpoMs, sites: t.group.remotes.map((r) => r.site) };
      });
      return {
        services: controller.status(),
        sites: siteStatus(),
        journal: {
          used: journal.positions.head - journal.positions.tail,
          capacity: journal.positions.capacity,
        },
        tasks: tasks.map((t, i) => ({ name: t.name, state: t.state, ...targetsSeen[i] })),
        retention: retention.status(),
      };
    });
    // agents that connected before the store existed get their assignments now
    for (const agent of listener.connectedAgents()) {
      control.onAgent(agent).catch((e) =>
        log.error("cannot send an agent its assignments", { agent, error: e })
      );
    }
    const server = await startWebServer({
      listen: http as Address & { transport: "tcp" },
      tls: tlsCert && tlsKey ? { certFile: tlsCert, keyFile: tlsKey } : undefined,
      db,
      audit,
      fileToken: token,
      adminPasswordFile: optStr(p, "admin-password-file"),
      store,
      actions: gatewayActions({
        store,
        recovery,
        services: {
          status: () => controller.status(),
          failover: (name, cause, point) => controller.failover(name, cause, {}, point),
          failback: (name) => failback(failbackDeps, name),
        },
        volumes: () => journal.volumes(),
        checkPoint,
        sites: () => remotes.map((r) => r.site),
        control,
        tests,
        copies: () => ({ sites: siteStatus() }),
      }),
      followTasks: true,
      discovery,
      recoveries: () => recovery.list(),
      status: (): GatewayStatus => ({
        role: "local-gateway",
        site: str(p, "id"),
        uptimeMs: Math.round(performance.now() - started),
        agents: listener.connectedAgents(),
        refused: Object.fromEntries(listener.refused),
        liveness: liveness.status(),
        heartbeats: heartbeats.stats(),
        services: controller.status(),
        assignments: control.status(),
        journal: { ...journal.positions, used: journal.positions.head - journal.positions.tail },
        volumes: journal.volumes().map((v) => ({
          id: v.id,
          agent: v.agent,
          name: v.name,
          size: v.size,
          mirror: v.mirrorPath,
          lastSeq: v.lastSeq,
          durableSeq: v.durableSeq,
          mirrorSeq: mirror.applied(v.id),
          journalBytes: journal.heldBytes(v.id),
          bound: v.bound ?? null,
        })),
        sites: siteStatus(),
        tests: tests.list(),
        retention: retention.status(),
        detectorQos: qos.status(),
        alarms: alarms.status(),
        taskTargets: targetsSeen,
        drills: drills.latest().map((d) => ({
          task: d.task,
          id: d.id,
          passed: d.status === "passed",
          rtoMs: d.rtoMs,
          rpoMs: d.rpoMs,
          finishedAt: d.finishedAt ?? 0,
          reasons: d.reasons,
        })),
      }),
      routes: (app) => {
        failoverRoutes(
          app,
          controller,
          (name) => failback(failbackDeps, name),
          async (agent, site, point) => {
            const vols = journal.volumes().filter((v) => v.agent === agent && !v.retired);
            if (vols.length === 0) throw new Error(`no volume of ${agent} is journaled here`);
            for (const v of vols) await checkPoint(site, `${v.agent}/${v.name}`, point);
          },
        );
        recoveryRoutes(app, recovery);
        drillRoutes(app, { drills, links: () => qos.status() });
        const points = new RecoveryPoints({
          db,
          audit,
          request: siteRequest,
          lastSeq: (key) => journal.volumes().find((v) => `${v.agent}/${v.name}` === key)?.lastSeq,
          mark: markCheckpoint,
          linked: (site) => remotes.find((r) => r.site === site)?.client.connected ?? false,
        });
        pointsRoutes(app, { store, points, search: new PointSearch({ store, audit, tests, points }) });
      },
    });
    cleanups.push(() => server.close());
    // after the web server: the tests a previous run left end through its audit and events
    await tests.start();
    await drills.start();
    cleanups.push(() => drills.close());
    log.info("local gateway ready", {
      agents: listener.describe(),
      heartbeats: `${hb.hostname}:${heartbeats.port}`,
      http: server.url,
      journal: journal.ring.path,
    });
    return { stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

interface Remote {
  site: string;
  sender: Sender;
  client: SiteClient;
  /** The --remote-bandwidth limit (bytes/s), 0 if none: a cap on what the site's tasks allow. */
  bandwidth: number;
  /** Highest acknowledged throughput seen in one second (bytes/s). */
  peakBps: number;
}

/** One sender (journal reader) and one TLS client per --remote site. */
async function openRemotes(
  p: Parsed,
  dataDir: string,
  journal: Journal,
  mirror: MirrorApplier,
  tasks: { policyOf: (v: VolumeInfo) => Mirror | undefined; onLink: (site: string, up: boolean) => void },
): Promise<Remote[]> {
  const addrs = pairs("remote", p["remote"]);
  if (addrs.size === 0) return [];
  const fps = pairs("remote-fingerprint", p["remote-fingerprint"]);
  const identity = await loadIdentity(optStr(p, "key-dir") ?? `${dataDir}/keys`);
  const store = new CursorStore(journal.database);
  const bandwidth = pairs("remote-bandwidth", p["remote-bandwidth"]);
  for (const site of bandwidth.keys()) {
    if (!addrs.has(site)) {
      throw new UsageError(`--remote-bandwidth ${site}: no --remote ${site}=HOST:PORT given`);
    }
  }
  ensurePrivateDir(`${dataDir}/sites`);
  const congestion = str(p, "congestion") as "block" | "pull-ahead";
  const out: Remote[] = [];
  for (const [site, addr] of addrs) {
    const fp = fps.get(site);
    if (!fp) {
      throw new UsageError(`--remote ${site}: no --remote-fingerprint ${site}=… given (pin the site's key)`);
    }
    const a = parseAddress(addr);
    if (a.transport !== "tcp") throw new UsageError(`--remote ${site} must be HOST:PORT`);
    const sender = await Sender.open({
      name: `site:${site}`,
      journal,
      store,
      source: { imageFd: (id) => mirror.imageFd(id), appliedPos: () => mirror.appliedPos },
      // a retired volume (its task paused or deleted) is not sent
      carries: (v) => !v.retired,
      windowBytes: num(p, "window"),
      syncChunk: num(p, "sync-chunk"),
      bandwidth: bandwidth.has(site) ? parseSize(bandwidth.get(site)!) : 0,
      // a task's strategy for its volume, else --congestion
      congestion: (v) => tasks.policyOf(v)?.congestion ?? congestion,
      compress: (id) => {
        const v = journal.volume(id);
        return v !== undefined && tasks.policyOf(v)?.compression === true;
      },
      stateDir: `${dataDir}/sites`,
    });
    const client = new SiteClient({
      site,
      hostname: a.hostname,
      port: a.port,
      fingerprint: parseFingerprint(fp),
      identity,
      localSite: str(p, "id"),
      sender,
      volumes: () => journal.volumes(),
      // rgp: the site acknowledges once its replica holds a record; rsp: also its standby; lgp
      // (the site is asynchronous to the writers either way) leaves it to the site's --ack-after
      ackPoint: (v) => {
        const a = tasks.policyOf(v)?.ackPoint;
        return a === "rgp" || a === "rsp" ? a : undefined;
      },
      retention: (v) => {
        const m = tasks.policyOf(v);
        if (!m?.retentionHours) return undefined;
        return {
          windowMs: Math.round(m.retentionHours * 3_600_000),
          ...(m.retentionBytes ? { maxBytes: m.retentionBytes } : {}),
        };
      },
      onLink: (up) => tasks.onLink(site, up),
    });
    const r: Remote = {
      site,
      sender,
      client,
      bandwidth: bandwidth.has(site) ? parseSize(bandwidth.get(site)!) : 0,
      peakBps: 0,
    };
    let last = 0;
    const sampler = setInterval(() => {
      r.peakBps = Math.max(r.peakBps * 0.999, sender.ackedBytes - last);
      last = sender.ackedBytes;
    }, 1000);
    Deno.unrefTimer(sampler); // a measurement never keeps the process alive
    out.push(r);
  }
  for (const site of pairs("remote-fingerprint", p["remote-fingerprint"]).keys()) {
    if (!addrs.has(site)) {
      throw new UsageError(`--remote-fingerprint ${site}: no --remote ${site}=HOST:PORT given`);
    }
  }
  return out;
}

/** Whether a previous run left switch rules recorded (they must be reconciled even with no --service now). */
async function hasRecordedRules(db: Db): Promise<boolean> {
  return (await db.select().from(servicesTable)).some((r) => r.rule !== null);
}

/** Recovery of this site's copies (the agents' volumes and the mirror) from any copy. */
async function openRecovery(
  db: Db,
  journal: Journal,
  audit: Audit,
  mirror: MirrorApplier,
  remotes: Remote[],
  controller: FailoverController,
  listener: GatewayListener,
): Promise<RecoveryService> {
  // a mirror left inconsistent by an interrupted recovery stays so across restarts
  const mirrorStates = new Map<number, string>();
  for (const row of await db.select().from(volumesTable)) {
    if (row.state === "inconsistent") mirrorStates.set(row.id, row.state);
  }
  return new RecoveryService({
    db,
    journal,
    audit,
    checkPoint: (site, volume, point) =>
      checkSitePoint(
        (s, msg, ms) => {
          const r = remotes.find((x) => x.site === s);
          if (!r) return Promise.reject(new Error(`no --remote ${s} on this gateway`));
          return r.client.request(msg, ms);
        },
        site,
        volume,
        point,
      ),
    store: (v, kind, site, writable, point) => {
      const key = `${v.agent}/${v.name}`;
      if (kind === "lgp") return new FileChunks(mirror.imageFd(v.id), v.size, writable === true);
      if (kind === "lsp") {
        if (!listener.chunks(v.agent)) return undefined;
        return relinking(() => listener.store(v.agent, key, "lsp"));
      }
      const r = remotes.find((x) => x.site === site);
      return r?.client.connected ? r.client.chunks.store(key, kind, point) : undefined;
    },
    copies: async (v) => {
      const out: { ref: SourceRef; info: CopyInfo | undefined }[] = [{
        ref: { kind: "lgp" },
        info: {
          state: mirrorStates.get(v.id) ?? "consistent",
          lastSeq: mirror.applied(v.id),
          lastTime: mirror.appliedAt(v.id),
        },
      }];
      for (const r of remotes) {
        const answer = r.client.connected
          ? await r.client.request({ type: "copies", volume: `${v.agent}/${v.name}` }, 10_000).catch(() =>
            undefined
          )
          : undefined;
        const ok = answer?.ok === true;
        out.push({ ref: { kind: "rgp", site: r.site }, info: ok ? answer!.rgp as CopyInfo : undefined });
        out.push({
          ref: { kind: "rsp", site: r.site },
          info: ok && answer!.rsp ? answer!.rsp as CopyInfo : undefined,
        });
      }
      return out;
    },
    throughput: (ref) => {
      if (ref.kind === "lgp") return 1e9;
      const r = remotes.find((x) => x.site === ref.site);
      const measured = r?.peakBps || 100e6;
      return r?.sender.bandwidth ? Math.min(r.sender.bandwidth, measured) : measured;
    },
    divergence: async (v, source, target, chunkSize) => {
      const key = `${v.agent}/${v.name}`;
      const agentMap = async (): Promise<Part> => {
        if (!listener.chunks(v.agent)) throw new Error(`agent ${v.agent} is not connected`);
        const d = await relinking(() => listener.chunks(v.agent)?.store(key, "lsp")).divergence!();
        return { what: `the agent's dirty map (since ${d.since})`, chunkSize: d.chunkSize, chunks: d.chunks };
      };
      if (source.kind === "lgp") {
        // the map covers what the agent wrote that the gateway may lack, not damage done to
        // the disk from outside: used only when asked for
        const u = union([await agentMap()], chunkSize);
        return { chunks: u.chunks, known: false, reason: u.reason };
      }
      // failback: what the site wrote since its promotion, and what this site wrote that it never got
      const r = remotes.find((x) => x.site === source.site);
      if (!r?.client.connected) return { known: false, reason: `site ${source.site} is not connected` };
      let theirs: Part;
      try {
        const d = await r.client.chunks.store(key, "rsp").divergence!();
        theirs = {
          what: `${source.site}'s writes since ${d.since}`,
          chunkSize: d.chunkSize,
          chunks: d.chunks,
        };
      } catch (e) {
        return { known: false, reason: `${source.site} tracks no divergence: ${(e as Error).message}` };
      }
      const parts = [theirs, ...await r.sender.unreceived(v.id, chunkSize)];
      if (target === "lsp") parts.push(await agentMap());
      const u = union(parts, chunkSize);
      // the promotion is the common point only while the service runs there (a failback); later the
      // site's map is that of a past promotion and says nothing of what happened since
      const failedOver = controller.status().some((s) =>
        s.agent === v.agent && s.site === source.site && s.state !== "protected"
      );
      return {
        chunks: u.chunks,
        known: failedOver,
        reason: failedOver ? u.reason : `${u.reason}; the service is not failed over to ${source.site}`,
      };
    },
    mirrorCaughtUp: () => mirror.caughtUp(),
    fence: (agent, reason) => controller.fence(agent, reason),
    unfence: (agent, cause) => controller.unfence(agent, cause),
    isFenced: (agent) => controller.isFenced(agent),
    contentReplaced: (v) => {
      for (const r of remotes) r.sender.resetVolume(v.id);
    },
    mirrorState: (v, state) => {
      if (state) {
        mirrorStates.set(v.id, state);
        serialized(db, () => db.update(volumesTable).set({ state }).where(eq(volumesTable.id, v.id))).catch(
          () => {},
        );
      }
      return mirrorStates.get(v.id) ?? "consistent";
    },
  });
}
