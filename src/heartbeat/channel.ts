// The heartbeat channel over UDP, on its own socket so that a congested replication
// TCP stream cannot hold heartbeats back. The sender numbers heartbeats by the slot
// of its monotonic clock (seq k is sent at start + (k−1)·η), so a stalled event loop
// shows up as missing numbers, which the detectors treat as losses, rather than as
// a schedule that slides. The gateway may set η (its QoS configuration) and probe the
// link: the sender then reports its η and echoes the probe in its heartbeats.
import dgram from "node:dgram";
import { isIP, isIPv6 } from "node:net";
import { logger } from "../log.ts";
import {
  decodeProbe,
  type DropReason,
  encodeHeartbeat,
  encodeProbe,
  type HeartbeatStatus,
  MIN_SECRET_BYTES,
  openHeartbeat,
  ReplayGuard,
  type ReplayGuardOptions,
} from "./codec.ts";

const log = logger("heartbeat");

function checkSecret(agentId: string, secret: Uint8Array): void {
  if (secret.length < MIN_SECRET_BYTES) {
    throw new RangeError(`heartbeat secret for ${agentId} must be at least ${MIN_SECRET_BYTES} bytes`);
  }
}

function randomBoot(): bigint {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return new DataView(bytes.buffer).getBigUint64(0);
}

/** Calls `emit` at most once per second per key, passing how many calls it swallowed. */
class RateLimitedLog {
  private readonly last = new Map<string, { at: number; suppressed: number }>();
  constructor(private readonly maxKeys = 4096) {}

  note(key: string, now: number, emit: (suppressed: number) => void): void {
    const seen = this.last.get(key);
    if (seen && now - seen.at < 1000) {
      seen.suppressed++;
      return;
    }
    if (!seen && this.last.size >= this.maxKeys) {
      for (const [k, v] of this.last) if (now - v.at >= 1000) this.last.delete(k);
      if (this.last.size >= this.maxKeys) return; // a flood from many addresses: count only
    }
    emit(seen?.suppressed ?? 0);
    this.last.set(key, { at: now, suppressed: 0 });
  }
}

export interface HeartbeatSenderOptions {
  host: string;
  port: number;
  agentId: string;
  /** Shared with the receiver; never sent nor logged. */
  secret: Uint8Array;
  /** η, default 100 ms. */
  intervalMs?: number;
  /** The latest service check result; must return at once (the check runs elsewhere). */
  getStatus: () => HeartbeatStatus;
}

export interface HeartbeatSender {
  readonly boot: bigint;
  /** A new period: the next heartbeat leaves now and the numbering goes on at the new pace. */
  setInterval(ms: number): void;
  close(): Promise<void>;
}

/** The shortest and longest period a gateway may set. */
export const MIN_INTERVAL_MS = 1, MAX_INTERVAL_MS = 60_000;

export function startHeartbeatSender(opts: HeartbeatSenderOptions): HeartbeatSender {
  checkSecret(opts.agentId, opts.secret);
  let eta = opts.intervalMs ?? 100;
  if (!(eta > 0)) throw new RangeError("intervalMs must be positive");
  const boot = randomBoot();
  const socket = dgram.createSocket(isIPv6(opts.host) ? "udp6" : "udp4");
  const errors = new RateLimitedLog();
  const warn = (msg: string, err: unknown) =>
    errors.note(
      msg,
      performance.now(),
      (suppressed) => log.warn(msg, { err, target: `${opts.host}:${opts.port}`, suppressed }),
    );
  socket.on("error", (err) => warn("heartbeat socket error", err));

  let start = performance.now();
  let lastSeq = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let closed = false;
  // the extension goes only to a gateway that asked for it (set η or probed)
  let extended = false;
  let echo: { nonce: bigint; at: number } | undefined;
  socket.on("message", (msg, rinfo) => {
    // probes come from where heartbeats go (the gateway, or a relay on the way)
    if (rinfo.port !== opts.port || (isIP(opts.host) && rinfo.address !== opts.host)) return;
    const nonce = decodeProbe(msg);
    if (nonce === undefined) return;
    echo = { nonce, at: performance.now() };
    extended = true;
  });

  const status = (): HeartbeatStatus => {
    try {
      return opts.getStatus();
    } catch (err) {
      warn("heartbeat status check threw", err);
      return { healthy: false, detail: `status check failed: ${err instanceof Error ? err.message : err}` };
    }
  };

  const tick = () => {
    if (closed) return;
    const now = performance.now();
    const seq = Math.max(lastSeq + 1, Math.floor((now - start) / eta) + 1);
    lastSeq = seq;
    const datagram = encodeHeartbeat(
      {
        agentId: opts.agentId,
        boot,
        seq,
        sentAtMs: Date.now(),
        status: status(),
        ...(extended ? { intervalMs: eta } : {}),
        ...(echo ? { echo: { nonce: echo.nonce, holdMs: now - echo.at } } : {}),
      },
      opts.secret,
    );
    echo = undefined;
    socket.send(datagram, opts.port, opts.host, (err) => {
      if (err) warn("heartbeat send failed", err);
    });
    timer = setTimeout(tick, Math.max(0, start + seq * eta - performance.now()));
  };
  tick();

  return {
    boot,
    setInterval: (ms) => {
      if (!(ms >= MIN_INTERVAL_MS && ms <= MAX_INTERVAL_MS)) {
        throw new RangeError(`heartbeat interval must be ${MIN_INTERVAL_MS}..${MAX_INTERVAL_MS} ms`);
      }
      extended = true;
      if (ms === eta || closed) return;
      eta = ms;
      start = performance.now() - lastSeq * eta;
      clearTimeout(timer);
      tick();
    },
    close: () => {
      closed = true;
      clearTimeout(timer);
      return new Promise<void>((resolve) => socket.close(() => resolve()));
    },
  };
}

export interface HeartbeatMeta {
  boot: bigint;
  /** First heartbeat of a boot this receiver had not seen: the agent (re)started. */
  newBoot: boolean;
  /** Source address:port of the datagram. */
  peer: string;
  /** The sender's period, when it reports it. */
  intervalMs?: number;
  /** A probe the sender echoes, with how long it held it. */
  echo?: { nonce: bigint; holdMs: number };
}

export interface HeartbeatReceiverOptions extends ReplayGuardOptions {
  host: string;
  /** 0 for an ephemeral port (see `port` on the result). */
  port: number;
  secrets: ReadonlyMap<string, Uint8Array>;
  onHeartbeat(agentId: string, seq: number, status: HeartbeatStatus, now: number, meta: HeartbeatMeta): void;
  /** The `now` handed to onHeartbeat; monotonic by default, as detectors need. */
  clock?: () => number;
}

export interface ReceiverStats {
  accepted: number;
  dropped: Record<DropReason, number>;
}

export interface HeartbeatReceiver {
  readonly port: number;
  stats(): ReceiverStats;
  /** Sends a probe to a heartbeat's source (`peer` as in HeartbeatMeta); its echo comes in a heartbeat. */
  probe(peer: string, nonce: bigint): void;
  close(): Promise<void>;
}

export async function startHeartbeatReceiver(opts: HeartbeatReceiverOptions): Promise<HeartbeatReceiver> {
  for (const [agentId, secret] of opts.secrets) checkSecret(agentId, secret);
  const clock = opts.clock ?? (() => performance.now());
  const guard = new ReplayGuard({ maxBootSkewMs: opts.maxBootSkewMs, retiredBoots: opts.retiredBoots });
  const stats: ReceiverStats = {
    accepted: 0,
    dropped: {
      "oversized": 0,
      "malformed": 0,
      "unknown-agent": 0,
      "bad-mac": 0,
      "replay": 0,
      "retired-boot": 0,
      "stale-boot": 0,
    },
  };
  const dropLog = new RateLimitedLog();
  const socket = dgram.createSocket(isIPv6(opts.host) ? "udp6" : "udp4");
  socket.on("error", (err) => log.error("heartbeat receiver socket error", { err }));

  socket.on("message", (msg, rinfo) => {
    const now = clock();
    const peer = `${rinfo.address}:${rinfo.port}`;
    const opened = openHeartbeat(msg, opts.secrets, guard, { wallMs: Date.now(), monoMs: performance.now() });
    if (!opened.ok) {
      stats.dropped[opened.reason]++;
      dropLog.note(
        peer,
        now,
        (suppressed) =>
          log.warn("heartbeat dropped", { peer, reason: opened.reason, agentId: opened.agentId, suppressed }),
      );
      return;
    }
    stats.accepted++;
    const hb = opened.heartbeat;
    if (opened.newBoot) log.info("agent boot", { agentId: hb.agentId, boot: hb.boot, peer });
    try {
      opts.onHeartbeat(hb.agentId, hb.seq, hb.status, now, {
        boot: hb.boot,
        newBoot: opened.newBoot,
        peer,
        ...(hb.intervalMs !== undefined ? { intervalMs: hb.intervalMs } : {}),
        ...(hb.echo ? { echo: hb.echo } : {}),
      });
    } catch (err) {
      log.error("onHeartbeat threw", { err, agentId: hb.agentId });
    }
  });

  await new Promise<void>((resolve, reject) => {
    const fail = (err: Error & { code?: string }) => {
      const why = err.code === "EADDRINUSE" ? "address in use (another Continuum running?)" : err.message;
      reject(new Error(`cannot listen for heartbeats on ${opts.host}:${opts.port}: ${why}`));
    };
    socket.once("error", fail);
    socket.bind(opts.port, opts.host, () => {
      socket.off("error", fail);
      resolve();
    });
  });

  return {
    port: socket.address().port,
    stats: () => structuredClone(stats),
    probe: (peer, nonce) => {
      const i = peer.lastIndexOf(":");
      socket.send(encodeProbe(nonce), Number(peer.slice(i + 1)), peer.slice(0, i), (err) => {
        if (err) dropLog.note(peer, clock(), () => log.warn("cannot probe a heartbeat link", { peer, err }));
      });
    },
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}

/**
 * Sends heartbeats from a Worker of their own (src/heartbeat/sender-worker.ts), so
 * that a busy event loop here cannot delay them; this thread posts the status every
 * η. If the Worker cannot start, heartbeats are sent from this thread instead.
 */
export function startHeartbeatThread(
  opts: HeartbeatSenderOptions & { stallMs?: number },
): { close(): Promise<void>; setInterval(ms: number): void } {
  checkSecret(opts.agentId, opts.secret);
  const eta = opts.intervalMs ?? 100;
  let ordered: number | undefined;
  let inThread: HeartbeatSender | undefined;
  let worker: Worker | undefined;
  const fallBack = (why: unknown) => {
    log.warn("heartbeat thread unavailable: sending heartbeats from the main thread", { error: why });
    worker?.terminate();
    worker = undefined;
    inThread ??= startHeartbeatSender(opts);
    if (ordered !== undefined) inThread.setInterval(ordered);
  };
  try {
    worker = new Worker(new URL("./sender-worker.ts", import.meta.url).href, { type: "module" });
    worker.onerror = (e) => {
      e.preventDefault();
      fallBack(e.message);
    };
    worker.postMessage({
      type: "start",
      host: opts.host,
      port: opts.port,
      agentId: opts.agentId,
      secret: opts.secret,
      intervalMs: eta,
      stallMs: opts.stallMs ?? 5000,
      status: opts.getStatus(),
    });
  } catch (e) {
    fallBack(e);
  }
  const poster = setInterval(() => {
    try {
      worker?.postMessage({ type: "status", status: opts.getStatus() });
    } catch (e) {
      fallBack(e);
    }
  }, eta);
  return {
    setInterval: (ms) => {
      if (!(ms >= MIN_INTERVAL_MS && ms <= MAX_INTERVAL_MS)) {
        throw new RangeError(`heartbeat interval must be ${MIN_INTERVAL_MS}..${MAX_INTERVAL_MS} ms`);
      }
      ordered = ms;
      if (inThread) inThread.setInterval(ms);
      else worker?.postMessage({ type: "interval", intervalMs: ms });
    },
    close: async () => {
      clearInterval(poster);
      if (inThread) await inThread.close();
      const w = worker;
      if (!w) return;
      await new Promise<void>((resolve) => {
        const done = setTimeout(resolve, 1000);
        w.onmessage = (e) => {
          if ((e.data as { type?: string })?.type === "closed") {
            clearTimeout(done);
            resolve();
          }
        };
        w.postMessage({ type: "close" });
      });
      w.terminate();
    },
  };
}
