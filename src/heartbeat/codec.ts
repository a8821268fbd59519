// Heartbeat datagram format and the receive-side checks, all pure. Layout (big-endian):
//
//   0  4  magic "CnHB"          22  8  sentAtMs (sender wall clock)
//   4  1  version = 1           30  1  agent id length (1..64), then UTF-8 agent id
//   5  1  flags (bit 0 healthy,     2  detail length (0..200), then UTF-8 detail
//            bit 1 extension)     [16  extension: u32 period η in µs, u64 echoed probe nonce
//   6  8  boot nonce                   (0: none), u32 µs the probe waited for this heartbeat]
//  14  8  seq (≤ 2^53−1)           32  HMAC-SHA256(secret, every byte before it)
//
// The extension is sent only to a gateway that asked for it (it set the period, or probed the
// link), so an older gateway never sees it. A probe is the gateway's 13-byte datagram
// "CnHP", version, u64 nonce, sent to a heartbeat's source: the sender echoes its nonce in its
// next heartbeat with how long it held it, which gives the gateway the link's round trip.
//
// The receiver parses before verifying only to learn whose secret to verify with;
// nothing from an unverified datagram changes any state.
import { createHmac, timingSafeEqual } from "node:crypto";

export interface HeartbeatStatus {
  healthy: boolean;
  detail: string;
}

export interface Heartbeat {
  agentId: string;
  /** Random per sender start; a new value means the agent restarted. */
  boot: bigint;
  /** Strictly increasing within a boot. */
  seq: number;
  /** Sender wall clock, bounds how old a datagram can be when it starts a boot. */
  sentAtMs: number;
  status: HeartbeatStatus;
  /** The sender's period η (extension). */
  intervalMs?: number;
  /** The latest probe received, echoed with how long it waited (extension; needs intervalMs). */
  echo?: { nonce: bigint; holdMs: number };
}

const MAGIC = [0x43, 0x6e, 0x48, 0x42]; // "CnHB"
const PROBE_MAGIC = [0x43, 0x6e, 0x48, 0x50]; // "CnHP"
const EXTENSION = 16;
export const PROBE_BYTES = 13;
const VERSION = 1;
const FIXED = 31; // bytes before the agent id
const MAC_BYTES = 32;
export const MAX_AGENT_ID_BYTES = 64;
export const MAX_DETAIL_BYTES = 200;
export const MAX_DATAGRAM_BYTES = 512;
export const MIN_SECRET_BYTES = 16;

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function mac(secret: Uint8Array, signed: Uint8Array): Uint8Array {
  return createHmac("sha256", secret).update(signed).digest();
}

/** Longest prefix of `text` that fits in `max` UTF-8 bytes without splitting a character. */
function truncateUtf8(text: string, max: number): Uint8Array {
  const bytes = utf8.encode(text);
  if (bytes.length <= max) return bytes;
  let end = max;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--; // back off continuation bytes
  return bytes.slice(0, end);
}

export function encodeHeartbeat(hb: Heartbeat, secret: Uint8Array): Uint8Array {
  const id = utf8.encode(hb.agentId);
  if (id.length < 1 || id.length > MAX_AGENT_ID_BYTES) {
    throw new RangeError(`agent id must be 1..${MAX_AGENT_ID_BYTES} UTF-8 bytes`);
  }
  if (!Number.isSafeInteger(hb.seq) || hb.seq < 0) {
    throw new RangeError("seq must be a safe non-negative integer");
  }
  const detail = truncateUtf8(hb.status.detail, MAX_DETAIL_BYTES);
  const ext = hb.intervalMs !== undefined;
  const intervalUs = ext ? Math.round(hb.intervalMs! * 1000) : 0;
  if (ext && !(intervalUs >= 1 && intervalUs <= 0xffffffff)) throw new RangeError("intervalMs out of range");
  if (hb.echo && !ext) throw new RangeError("an echo goes with intervalMs");
  const out = new Uint8Array(FIXED + id.length + 2 + detail.length + (ext ? EXTENSION : 0) + MAC_BYTES);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  out[4] = VERSION;
  out[5] = (hb.status.healthy ? 1 : 0) | (ext ? 2 : 0);
  view.setBigUint64(6, BigInt.asUintN(64, hb.boot));
  view.setBigUint64(14, BigInt(hb.seq));
  view.setBigUint64(22, BigInt(Math.max(0, Math.floor(hb.sentAtMs))));
  out[30] = id.length;
  out.set(id, FIXED);
  let at = FIXED + id.length;
  view.setUint16(at, detail.length);
  out.set(detail, at + 2);
  at += 2 + detail.length;
  if (ext) {
    view.setUint32(at, intervalUs);
    view.setBigUint64(at + 4, BigInt.asUintN(64, hb.echo?.nonce ?? 0n));
    view.setUint32(at + 12, Math.min(0xffffffff, Math.max(0, Math.round((hb.echo?.holdMs ?? 0) * 1000))));
    at += EXTENSION;
  }
  out.set(mac(secret, out.subarray(0, at)), at);
  return out;
}

/** The gateway's probe of a heartbeat link. */
export function encodeProbe(nonce: bigint): Uint8Array {
  const out = new Uint8Array(PROBE_BYTES);
  out.set(PROBE_MAGIC, 0);
  out[4] = VERSION;
  new DataView(out.buffer).setBigUint64(5, BigInt.asUintN(64, nonce));
  return out;
}

/** A probe's nonce, or undefined when the datagram is not a probe. */
export function decodeProbe(datagram: Uint8Array): bigint | undefined {
  if (datagram.length !== PROBE_BYTES || PROBE_MAGIC.some((b, i) => datagram[i] !== b)) return undefined;
  if (datagram[4] !== VERSION) return undefined;
  const nonce = new DataView(datagram.buffer, datagram.byteOffset, datagram.byteLength).getBigUint64(5);
  return nonce === 0n ? undefined : nonce;
}

export type Decoded =
  | { ok: true; heartbeat: Heartbeat }
  | { ok: false; reason: "oversized" | "malformed" };

/** Parses a datagram without authenticating it. */
export function decodeHeartbeat(datagram: Uint8Array): Decoded {
  if (datagram.length > MAX_DATAGRAM_BYTES) return { ok: false, reason: "oversized" };
  const malformed = { ok: false, reason: "malformed" } as const;
  if (datagram.length < FIXED + 1 + 2 + MAC_BYTES) return malformed;
  if (MAGIC.some((b, i) => datagram[i] !== b) || datagram[4] !== VERSION) return malformed;
  if ((datagram[5] & ~3) !== 0) return malformed;
  const ext = (datagram[5] & 2) !== 0 ? EXTENSION : 0;
  const view = new DataView(datagram.buffer, datagram.byteOffset, datagram.byteLength);
  const seq = view.getBigUint64(14);
  const sentAt = view.getBigUint64(22);
  if (seq > BigInt(Number.MAX_SAFE_INTEGER) || sentAt > BigInt(Number.MAX_SAFE_INTEGER)) return malformed;
  const idLen = datagram[30];
  if (idLen < 1 || idLen > MAX_AGENT_ID_BYTES) return malformed;
  const detailAt = FIXED + idLen;
  if (detailAt + 2 > datagram.length) return malformed;
  const detailLen = view.getUint16(detailAt);
  if (detailLen > MAX_DETAIL_BYTES || detailAt + 2 + detailLen + ext + MAC_BYTES !== datagram.length) {
    return malformed;
  }
  const extAt = detailAt + 2 + detailLen;
  const extension: Partial<Heartbeat> = {};
  if (ext) {
    const intervalUs = view.getUint32(extAt);
    if (intervalUs === 0) return malformed;
    extension.intervalMs = intervalUs / 1000;
    const nonce = view.getBigUint64(extAt + 4);
    if (nonce !== 0n) extension.echo = { nonce, holdMs: view.getUint32(extAt + 12) / 1000 };
  }
  try {
    return {
      ok: true,
      heartbeat: {
        ...extension,
        agentId: strictUtf8.decode(datagram.subarray(FIXED, detailAt)),
        boot: view.getBigUint64(6),
        seq: Number(seq),
        sentAtMs: Number(sentAt),
        status: {
          healthy: (datagram[5] & 1) === 1,
          detail: strictUtf8.decode(datagram.subarray(detailAt + 2, detailAt + 2 + detailLen)),
        },
      },
    };
  } catch {
    return malformed; // invalid UTF-8
  }
}

/** True when the datagram's MAC is right for `secret` (constant-time comparison). */
export function verifyHeartbeat(datagram: Uint8Array, secret: Uint8Array): boolean {
  if (datagram.length < MAC_BYTES) return false;
  const end = datagram.length - MAC_BYTES;
  return timingSafeEqual(mac(secret, datagram.subarray(0, end)), datagram.subarray(end));
}

export type DropReason =
  | "oversized"
  | "malformed"
  | "unknown-agent"
  | "bad-mac"
  | "replay"
  | "retired-boot"
  | "stale-boot";

export interface ReplayGuardOptions {
  /**
   * A datagram starting a new boot must have been sent within this of the receiver's wall clock, or of
   * the agent's own clock as last seen (default 5 min).
   */
  maxBootSkewMs?: number;
  /** Boots per agent remembered after they were replaced, and refused from then on (default 16). */
  retiredBoots?: number;
}

/** The receiver's clocks when a datagram arrives: wall (comparable with senders') and monotonic. */
export interface ReceiveClocks {
  wallMs: number;
  monoMs: number;
}

interface AgentWindow {
  boot: bigint;
  highestSeq: number;
  retired: bigint[];
  /** The sender's clock in the last datagram accepted, and the receiver's monotonic clock then. */
  senderMs: number;
  atMonoMs: number;
}

/**
 * Per-agent anti-replay state: the current boot and highest seq. Within a boot only a
 * higher seq passes. A different boot is a restart, but recorded datagrams of an
 * older boot carry a valid MAC too, so a new boot must also be recent by its sender
 * timestamp and must not be one this agent already left. "Recent" is judged against
 * the agent's own clock as last seen, carried forward on the receiver's monotonic
 * clock, or else against the receiver's wall clock: a clock jump on either host
 * (NTP step, `date -s`) then does not make a restarted agent's heartbeats stale.
 */
export class ReplayGuard {
  private readonly agents = new Map<string, AgentWindow>();
  private readonly maxSkew: number;
  private readonly keepRetired: number;

  constructor(opts: ReplayGuardOptions = {}) {
    this.maxSkew = opts.maxBootSkewMs ?? 5 * 60_000;
    this.keepRetired = opts.retiredBoots ?? 16;
  }

  /** Call only with authenticated heartbeats; updates the state when they pass. */
  admit(hb: Heartbeat, now: ReceiveClocks): "accept" | "new-boot" | DropReason {
    const known = this.agents.get(hb.agentId);
    if (known && known.boot === hb.boot) {
      if (hb.seq <= known.highestSeq) return "replay";
      known.highestSeq = hb.seq;
      known.senderMs = hb.sentAtMs;
      known.atMonoMs = now.monoMs;
      return "accept";
    }
    if (known?.retired.includes(hb.boot)) return "retired-boot";
    if (!this.recent(hb.sentAtMs, known, now)) return "stale-boot";
    const retired = known ? [...known.retired, known.boot].slice(-this.keepRetired) : [];
    this.agents.set(hb.agentId, {
      boot: hb.boot,
      highestSeq: hb.seq,
      retired,
      senderMs: hb.sentAtMs,
      atMonoMs: now.monoMs,
    });
    return "new-boot";
  }

  private recent(sentAtMs: number, known: AgentWindow | undefined, now: ReceiveClocks): boolean {
    if (Math.abs(sentAtMs - now.wallMs) <= this.maxSkew) return true;
    if (!known) return false; // nothing learned about this agent's clock yet: only the wall clock can judge
    const senderNow = known.senderMs + (now.monoMs - known.atMonoMs);
    return Math.abs(sentAtMs - senderNow) <= this.maxSkew;
  }
}

export type Opened =
  | { ok: true; heartbeat: Heartbeat; newBoot: boolean }
  | { ok: false; reason: DropReason; agentId?: string };

/** Every receive-side check in order: size, format, known agent, MAC, replay. */
export function openHeartbeat(
  datagram: Uint8Array,
  secrets: ReadonlyMap<string, Uint8Array>,
  guard: ReplayGuard,
  now: ReceiveClocks,
): Opened {
  const decoded = decodeHeartbeat(datagram);
  if (!decoded.ok) return decoded;
  const hb = decoded.heartbeat;
  const secret = secrets.get(hb.agentId);
  if (!secret) return { ok: false, reason: "unknown-agent", agentId: hb.agentId };
  if (!verifyHeartbeat(datagram, secret)) return { ok: false, reason: "bad-mac", agentId: hb.agentId };
  const verdict = guard.admit(hb, now);
  if (verdict === "accept" || verdict === "new-boot") {
    return { ok: true, heartbeat: hb, newBoot: verdict === "new-boot" };
  }
  return { ok: false, reason: verdict, agentId: hb.agentId };
}
