// Data recovery on the local gateway: runs, schedules and resumes recoveries of a
// volume's copies (the agent's disk, or this gateway's mirror) from a chosen
// source, and chooses the source in policy mode: every candidate with its state,
// the last sequence number it holds, its age at the disaster point and the
// estimated cost; the valid one of lowest cost wins, with the reason written down,
// and the other valid copies at the same point pull their share beside it. A fast
// recovery moves the tracked divergence when both copies share a known common
// point (no scan), and scans otherwise; the row says which and why.
import { SOURCE_RE } from "../tasks/model.ts";
import { and, eq, inArray } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { recoveries } from "../db/schema.ts";
import type { Audit } from "../audit/audit.ts";
import { logger } from "../log.ts";
import type { Journal, VolumeInfo } from "../journal/journal.ts";
import { Changes, nextOf } from "../io/changes.ts";
import type { ChunkStore, CopyKind } from "./chunk-ops.ts";
import { type NamedSource, type Progress, recover, type Strategy, type Verify } from "./engine.ts";

const log = logger("recovery");

export interface SourceRef {
  kind: "lgp" | "rgp" | "rsp";
  site?: string;
  /** rgp: the replica at this recovery point of the site's retention (sequence or checkpoint name). */
  point?: number | string;
}

/** What a holder says of its copy. */
export interface CopyInfo {
  state: string;
  lastSeq: number;
  /** Capture time of the newest record the copy holds (ms), 0 if unknown. */
  lastTime: number;
}

export interface Candidate {
  source: string;
  kind: SourceRef["kind"];
  site: string | null;
  state: string;
  lastSeq: number;
  lastTime: number;
  /** Newer (+) or older (−) than the disaster point, in records and ms. */
  ageSeq: number | null;
  ageMs: number | null;
  bytesToMove: number;
  throughputBps: number;
  costSeconds: number;
  valid: boolean;
  reason: string;
}

export interface RecoveryRequest {
  /** agent/name */
  volume: string;
  mode: "manual" | "policy";
  strategy: Strategy;
  source?: SourceRef;
  /** Policy mode: the disaster point, a sequence number or a time (ms since the epoch). */
  point?: { seq?: number; time?: number };
  target?: "lsp" | "lgp";
  chunkSize?: number;
  force?: boolean;
  /** Run at this time (ms since the epoch) instead of now. */
  at?: number;
  /**
   * fast only: `tracked` moves the chunks written on either side since a common point (no scan),
   * `scan` hashes both ends, `auto` (default) tracks when a common point is known.
   */
  method?: RequestedMethod;
  /** Manual mode: further sources holding the same point, pulled from at once. */
  also?: SourceRef[];
  verify?: Exclude<Verify, "none">;
}

export type RequestedMethod = "auto" | "scan" | "tracked";

/** The chunks two copies may differ in since their common point, or why that is not known. */
export interface Divergence {
  /** Undefined when no common point is known. */
  chunks?: number[];
  /** The common point is assured: `auto` relies on it. */
  known: boolean;
  reason: string;
}

export interface RecoveryDeps {
  db: Db;
  journal: Journal;
  audit: Audit;
  /** A copy's chunk store, or undefined when it cannot be reached now. */
  store: (
    volume: VolumeInfo,
    kind: CopyKind,
    site?: string,
    writable?: boolean,
    point?: number | string,
  ) => ChunkStore | undefined;
  /** Whether a site holds a recovery point of a volume; rejects with the site's reason. */
  checkPoint?: (site: string, volume: string, point: number | string) => Promise<unknown>;
  /** What each reachable copy of the volume holds (the local mirror and every site's copies). */
  copies: (volume: VolumeInfo) => Promise<{ ref: SourceRef; info: CopyInfo | undefined }[]>;
  /** Bytes per second a source's data can travel to this site. */
  throughput: (ref: SourceRef) => number;
  /** Notified when an agent or a site connects: a copy that was unreachable may be reachable now. */
  linked: Changes;
  /** Waits until this gateway's mirror holds everything journaled (so its copy is complete). */
  mirrorCaughtUp: () => Promise<void>;
  fence: (agent: string, reason: string) => Promise<void>;
  unfence: (agent: string, cause: string) => Promise<void>;
  isFenced: (agent: string) => string | undefined;
  /** Sources other than the mirror replaced the volume: senders void its old records and resynchronise. */
  contentReplaced: (volume: VolumeInfo) => void;
  /** Local mirror state (consistent / inconsistent). */
  mirrorState: (volume: VolumeInfo, state?: "consistent" | "inconsistent") => string;
  progress?: (id: number, p: Progress) => void;
  /** The tracked divergence between a source and a target, in chunks of `chunkSize`. */
  divergence?: (
    volume: VolumeInfo,
    source: SourceRef,
    target: "lsp" | "lgp",
    chunkSize: number,
  ) => Promise<Divergence>;
}

const DEFAULT_CHUNK = 1024 * 1024;
/**
 * How often a request asks again for a remote copy's state while it is not known: a copy held
 * behind a connected site (its standby reconnecting there) changes with no event here.
 */
const COPY_RETRY_MS = 500;
const HASH_RATE = 1e9; // bytes per second both ends can hash (measured here: see docs/benchmarks.md)

export function describeSource(r: SourceRef): string {
  return r.kind === "lgp" ? "lgp" : `${r.kind}@${r.site}`;
}

export function parseSource(text: string): SourceRef {
  if (text === "lgp") return { kind: "lgp" };
  const m = SOURCE_RE.exec(text);
  if (!m) throw new Error(`source "${text}": use lgp, rgp@SITE or rsp@SITE`);
  return { kind: m[2] as "rgp" | "rsp", site: text.slice(4) };
}

export class RecoveryService {
  private running = new Map<number, { signal: { aborted: boolean }; progress?: Progress }>();
  private timer: ReturnType<typeof setInterval> | undefined;
  /** Told when a recovery ends or is cancelled, or the service stops: whatever waits on one looks again. */
  private readonly changed = new Changes();

  constructor(private readonly d: RecoveryDeps) {}

  /** Resumes recoveries interrupted by a stop, and starts the scheduler. */
  async start(): Promise<void> {
    const rows = await this.d.db.select().from(recoveries).where(eq(recoveries.status, "running"));
    for (const r of rows) {
      log.warn("resuming an interrupted recovery from its checkpoint", {
        id: r.id,
        volume: r.volume,
        chunk: r.checkpoint,
      });
      this.launch(r.id);
    }
    this.timer = setInterval(() => this.due(), 1000);
    await this.due();
  }

  stop(): void {
    clearInterval(this.timer);
    for (const r of this.running.values()) r.signal.aborted = true;
    this.changed.notify();
  }

  private volume(key: string): VolumeInfo {
    const [agent, name] = key.split("/");
    const v = this.d.journal.volumes().find((x) => x.agent === agent && x.name === name);
    if (!v) throw new RecoveryError(404, `no volume "${key}" (use AGENT/NAME)`);
    return v;
  }

  /** Every candidate source, assessed against the disaster point, and the choice. */
  async candidates(
    volumeKey: string,
    point: RecoveryRequest["point"] = {},
    strategy: Strategy = "fast",
    target: "lsp" | "lgp" = "lsp",
  ) {
    const v = this.volume(volumeKey);
    const targetStore = this.d.store(v, target, undefined, true);
    const out: Candidate[] = [];
    for (const { ref, info } of await this.d.copies(v)) {
      if (target === "lgp" && ref.kind === "lgp") continue;
      const c: Candidate = {
        source: describeSource(ref),
        kind: ref.kind,
        site: ref.site ?? null,
        state: info?.state ?? "unreachable",
        lastSeq: info?.lastSeq ?? 0,
        lastTime: info?.lastTime ?? 0,
        ageSeq: point.seq !== undefined && info ? info.lastSeq - point.seq : null,
        ageMs: point.time !== undefined && info?.lastTime ? info.lastTime - point.time : null,
        bytesToMove: v.size,
        throughputBps: this.d.throughput(ref),
        costSeconds: 0,
        valid: false,
        reason: "",
      };
      if (!info) c.reason = "unreachable";
      else if (info.state !== "consistent") c.reason = `its copy is ${info.state}`;
      else if (point.seq !== undefined && info.lastSeq < point.seq) {
        c.reason = `holds records up to ${info.lastSeq}, before the disaster point ${point.seq}`;
      } else if (point.time !== undefined && info.lastTime < point.time) {
        c.reason = `its newest record is ${
          Math.round((point.time - info.lastTime) / 1000)
        } s before the disaster point`;
      } else c.valid = true;
      if (c.valid && strategy === "fast" && targetStore) {
        const source = this.d.store(v, ref.kind, ref.site);
        // an estimate that cannot be made counts the whole volume: the cost is then an upper bound
        if (source) c.bytesToMove = await estimateDifference(source, targetStore, v.size).catch(() => v.size);
      }
      // fast recovery also hashes both ends and ships one 16-byte hash per chunk over the link
      const hashSeconds = v.size / HASH_RATE + Math.ceil(v.size / DEFAULT_CHUNK) * 16 / c.throughputBps;
      c.costSeconds = c.bytesToMove / c.throughputBps + (strategy === "fast" ? hashSeconds : 0);
      if (c.valid) c.reason = `valid: about ${mib(c.bytesToMove)} to move at ${mib(c.throughputBps)}/s`;
      out.push(c);
    }
    const valid = out.filter((c) => c.valid).sort((a, b) =>
      a.costSeconds - b.costSeconds || rank(a.kind) - rank(b.kind)
    );
    const chosen = valid[0];
    // copies at the chosen one's point hold the same bytes: each pulls a share sized by its rate
    const together = chosen ? valid.filter((c) => c.lastSeq === chosen.lastSeq) : [];
    const shares = sharesOf(together);
    const refused = out.filter((c) => !c.valid).map((c) => `${c.source}: ${c.reason}`);
    const explanation = chosen
      ? `${chosen.source} chosen: ${chosen.state}, holds records up to ${chosen.lastSeq}` +
        (point.seq !== undefined ? ` (disaster point ${point.seq})` : "") +
        `, estimated ${chosen.costSeconds.toFixed(1)} s (${mib(chosen.bytesToMove)} at ${
          mib(chosen.throughputBps)
        }/s)` +
        (valid.length > 1 ? `, the cheapest of ${valid.length} valid sources` : ", the only valid source") +
        (together.length > 1
          ? `; pulled from ${together.length} sources at once: ${
            shares.map((s) => `${s.source} ${Math.round(s.share * 100)} %`).join(", ")
          } (by measured rate)`
          : "") +
        (refused.length ? `; refused: ${refused.join("; ")}` : "")
      : `no valid source: ${refused.join("; ")}`;
    return {
      candidates: out,
      chosen: chosen?.source ?? null,
      also: together.slice(1).map((c) => c.source),
      shares,
      explanation,
    };
  }

  /** Starts (or schedules) a recovery; returns its id. Refusals are RecoveryErrors with an HTTP status. */
  async request(req: RecoveryRequest): Promise<{ id: number; source: string; explanation: string | null }> {
    const v = this.volume(req.volume);
    const target = req.target ?? "lsp";
    let source: SourceRef;
    let explanation: string | null = null;
    let also = req.also ?? [];
    if (req.mode === "policy") {
      const c = await this.candidates(req.volume, req.point ?? {}, req.strategy, target);
      if (!c.chosen) throw new RecoveryError(409, c.explanation);
      source = parseSource(c.chosen);
      also = c.also.map(parseSource);
      explanation = c.explanation;
    } else {
      if (!req.source) throw new RecoveryError(400, "manual mode needs a source (lgp, rgp@SITE or rsp@SITE)");
      source = req.source;
      if (target === "lgp" && source.kind === "lgp") {
        throw new RecoveryError(400, "the mirror cannot be its own source");
      }
      if (source.point !== undefined) {
        // checked before anything is fenced: a point the site does not hold changes nothing
        if (source.kind !== "rgp" || !this.d.checkPoint) {
          throw new RecoveryError(400, "a recovery point is read from a site's replica: use rgp@SITE");
        }
        await this.d.checkPoint(source.site!, req.volume, source.point).catch((e: Error) => {
          throw new RecoveryError(409, `cannot recover ${req.volume} at point ${source.point}: ${e.message}`);
        });
      }
      // a site link that is reconnecting answers within seconds: give it that long (asked again
      // at once when a link comes up)
      let info: CopyInfo | undefined;
      for (const deadline = performance.now() + 10_000;;) {
        info = (await this.d.copies(v)).find((c) => describeSource(c.ref) === describeSource(source))?.info;
        const left = deadline - performance.now();
        if (info || left <= 0) break;
        await this.d.linked.next(Math.min(left, COPY_RETRY_MS));
      }
      if (!info) throw new RecoveryError(409, `source ${describeSource(source)} is unreachable`);
      // at a point, what counts is the point (checked above), not the replica's state now
      if (info.state !== "consistent" && !req.force && source.point === undefined) {
        throw new RecoveryError(
          409,
          `source ${describeSource(source)} is ${info.state}: recovering from it needs force`,
        );
      }
      for (const a of also) {
        if (describeSource(a) === describeSource(source) || (target === "lgp" && a.kind === "lgp")) {
          throw new RecoveryError(400, `${describeSource(a)} cannot be a further source of this recovery`);
        }
      }
    }
    if (req.method === "tracked" && req.strategy !== "fast") {
      throw new RecoveryError(400, "a tracked recovery is a fast one: use strategy fast");
    }
    if (this.busy(req.volume)) throw new RecoveryError(409, `a recovery of ${req.volume} is already running`);
    const [row] = await serialized(this.d.db, () =>
      this.d.db.insert(recoveries).values({
        volume: req.volume,
        source: JSON.stringify(source),
        target,
        strategy: req.strategy,
        mode: req.mode,
        chunkSize: req.chunkSize ?? DEFAULT_CHUNK,
        status: req.at ? "scheduled" : "running",
        scheduledAt: req.at ?? null,
        createdAt: Date.now(),
        explanation,
        force: req.force ? 1 : 0,
        method: req.strategy === "full" ? "full" : req.method ?? "auto",
        also: JSON.stringify(also),
        verify: req.verify ?? "moved",
      }).returning());
    await this.d.audit.record({
      subject: `volume:${req.volume}`,
      kind: "recovery",
      to: req.at ? "scheduled" : "running",
      cause: `${req.strategy} recovery of the ${target} from ${describeSource(source)}` +
        (req.at ? ` scheduled for ${new Date(req.at).toISOString()}` : ""),
      detail: { id: row.id, mode: req.mode, explanation },
    });
    if (!req.at) this.launch(row.id);
    return { id: row.id, source: describeSource(source), explanation };
  }

  /**
   * Failback's online pass: copies what differs from a source into the volume and
   * the mirror while the source still changes (its service runs), so the final,
   * verified recovery after the source froze moves only the last difference.
   * Not verified, not recorded: the copies stay fenced and inconsistent meanwhile.
   * Skipped when the divergence since the failover is tracked: the final pass then
   * moves exactly that, and a scan of the whole volume now would cost more.
   */
  async precopy(volumeKey: string, source: SourceRef, chunkSize = DEFAULT_CHUNK) {
    const v = this.volume(volumeKey);
    if (this.busy(volumeKey)) throw new RecoveryError(409, `a recovery of ${volumeKey} is already running`);
    const from = this.d.store(v, source.kind, source.site);
    if (!from) throw new RecoveryError(409, `source ${describeSource(source)} is unreachable`);
    const d = await this.d.divergence?.(v, source, "lsp", chunkSize).catch((e) => {
      // without a known divergence the online pass scans: slower, never wrong
      log.warn("the tracked divergence cannot be read: the online pass scans", {
        volume: volumeKey,
        source: describeSource(source),
        error: e,
      });
      return undefined;
    });
    if (d?.known) return { bytesMoved: 0, bytesCompared: 0, skipped: `divergence tracked (${d.reason})` };
    let moved = 0, compared = 0;
    for (const target of ["lsp", "lgp"] as const) {
      const to = this.d.store(v, target, undefined, true);
      if (!to) throw new RecoveryError(409, `the ${target} copy of ${volumeKey} is unreachable`);
      if (target === "lgp") this.d.mirrorState(v, "inconsistent");
      const o = await recover({
        sources: [{ name: describeSource(source), store: from }],
        target: to,
        strategy: "fast",
        chunkSize,
        verify: "none",
      });
      moved += o.bytesMoved;
      compared += o.bytesCompared;
    }
    return { bytesMoved: moved, bytesCompared: compared, skipped: null };
  }

  /** Resolves with a recovery's final row once it is done, failed or cancelled. */
  async settled(id: number): Promise<typeof recoveries.$inferSelect> {
    const done = new AbortController();
    try {
      for (;;) {
        // registered before the look: an end between the look and the wait is not missed
        const ended = this.changed.next(undefined, done.signal);
        const [r] = await this.d.db.select().from(recoveries).where(eq(recoveries.id, id));
        if (!r) throw new RecoveryError(404, `no recovery ${id}`);
        if (!["running", "scheduled"].includes(r.status) && !this.running.has(id)) return r;
        await ended;
      }
    } finally {
      done.abort();
    }
  }

  private busy(volume: string): boolean {
    return [...this.running.keys()].some((id) => this.volumeOf.get(id) === volume);
  }
  private volumeOf = new Map<number, string>();

  async cancel(id: number): Promise<void> {
    const [r] = await this.d.db.select().from(recoveries).where(eq(recoveries.id, id));
    if (!r) throw new RecoveryError(404, `no recovery ${id}`);
    if (r.status !== "scheduled" && r.status !== "running") {
      throw new RecoveryError(409, `recovery ${id} is ${r.status}`);
    }
    const live = this.running.get(id);
    if (live) live.signal.aborted = true;
    this.changed.notify();
    await this.finish(id, "cancelled", "cancelled by the operator");
  }

  async list() {
    const rows = await this.d.db.select().from(recoveries);
    return rows.map((r) => ({
      ...r,
      source: JSON.parse(r.source),
      also: JSON.parse(r.also),
      progress: this.running.get(r.id)?.progress ?? null,
    }));
  }

  private async due(): Promise<void> {
    const now = Date.now();
    const rows = await this.d.db.select().from(recoveries).where(eq(recoveries.status, "scheduled"));
    for (const r of rows) {
      if ((r.scheduledAt ?? 0) > now || this.running.has(r.id)) continue;
      await serialized(this.d.db, () =>
        this.d.db.update(recoveries).set({ status: "running" }).where(
          and(eq(recoveries.id, r.id), eq(recoveries.status, "scheduled")),
        ));
      log.info("starting a scheduled recovery", {
        id: r.id,
        volume: r.volume,
        late: now - (r.scheduledAt ?? now),
      });
      this.launch(r.id);
    }
  }

  private launch(id: number): void {
    const signal = { aborted: false };
    this.running.set(id, { signal });
    this.run(id, signal).catch(async (e) => {
      log.error("recovery failed", { id, error: e });
      await this.finish(id, signal.aborted ? "cancelled" : "failed", (e as Error).message);
    }).finally(() => {
      this.running.delete(id);
      this.volumeOf.delete(id);
      this.changed.notify();
    });
  }

  private async finish(id: number, status: string, error: string | null): Promise<void> {
    await serialized(
      this.d.db,
      () =>
        this.d.db.update(recoveries).set({ status, error, finishedAt: Date.now() }).where(
          and(eq(recoveries.id, id), inArray(recoveries.status, ["running", "scheduled"])),
        ),
    );
    this.changed.notify();
    const [r] = await this.d.db.select().from(recoveries).where(eq(recoveries.id, id));
    if (r) {
      await this.d.audit.record({
        subject: `volume:${r.volume}`,
        kind: "recovery",
        to: status,
        cause: error ?? status,
        detail: { id },
      });
    }
  }

  private async run(id: number, signal: { aborted: boolean }): Promise<void> {
    const [r] = await this.d.db.select().from(recoveries).where(eq(recoveries.id, id));
    if (!r) return;
    this.volumeOf.set(id, r.volume);
    const v = this.volume(r.volume);
    const source = JSON.parse(r.source) as SourceRef;
    const target = r.target as "lsp" | "lgp";
    // after a gateway restart the agents and sites reconnect within seconds: wait for them
    const sourceStore = await this.reachable(
      () => this.d.store(v, source.kind, source.site, false, source.point),
      signal,
    );
    if (!sourceStore) throw new Error(`source ${describeSource(source)} is unreachable`);
    const targetStore = await this.reachable(() => this.d.store(v, target, undefined, true), signal);
    if (!targetStore) {
      throw new Error(`the ${target} copy of ${r.volume} is unreachable (is its agent connected?)`);
    }
    // further sources help when they are there; the recovery does not wait for them
    const sources: NamedSource[] = [{ name: describeSource(source), store: sourceStore }];
    for (const a of JSON.parse(r.also) as SourceRef[]) {
      const store = this.d.store(v, a.kind, a.site);
      if (store) sources.push({ name: describeSource(a), store });
      else log.warn("a further source of the recovery is unreachable", { id, source: describeSource(a) });
    }
    // the volume takes no writes while its copies are rebuilt
    const wasFenced = this.d.isFenced(v.agent);
    if (!wasFenced) await this.d.fence(v.agent, `recovering ${r.volume}`);
    try {
      await this.rebuild(id, r, v, source, sources, target, targetStore, signal);
    } catch (e) {
      // a mirror rebuild that stops leaves the volume itself intact: it takes writes again;
      // a volume rebuild that stops leaves it half-written, so it stays fenced
      if (!wasFenced && target === "lgp") {
        await this.d.unfence(v.agent, `recovery of the mirror of ${r.volume} stopped`);
      }
      throw e;
    }
    if (!wasFenced) await this.d.unfence(v.agent, `recovery of ${r.volume} done`);
  }

  /** Waits for a store until it appears (an agent or a site connecting), the recovery stops, or a minute passes. */
  private async reachable(
    get: () => ChunkStore | undefined,
    signal: { aborted: boolean },
  ): Promise<ChunkStore | undefined> {
    const deadline = performance.now() + REACH_WAIT_MS;
    for (;;) {
      const s = get();
      const left = deadline - performance.now();
      if (s || signal.aborted || left <= 0) return s;
      await nextOf(left, this.d.linked, this.changed);
    }
  }

  /** Tracked or scan (or full), with why: the tracked divergence when it is known (or asked for). */
  private async method(
    r: typeof recoveries.$inferSelect,
    v: VolumeInfo,
    source: SourceRef,
    target: "lsp" | "lgp",
  ): Promise<{ tracked?: number[]; method: "full" | "scan" | "tracked"; reason: string }> {
    if (r.strategy === "full") return { method: "full", reason: "full: every chunk moves" };
    if (r.method === "scan") return { method: "scan", reason: "scan: asked for" };
    const d: Divergence = this.d.divergence
      ? await this.d.divergence(v, source, target, r.chunkSize).catch((e) => ({
        known: false,
        reason: `the tracked divergence cannot be read: ${(e as Error).message}`,
      }))
      : { known: false, reason: "no divergence is tracked here" };
    if (d.chunks && (d.known || r.method === "tracked")) {
      return {
        tracked: d.chunks,
        method: "tracked",
        reason: `tracked: ${d.chunks.length} chunks (${d.reason})`,
      };
    }
    return {
      method: "scan",
      reason: d.chunks
        ? `scan: no common point known (${d.reason}; ask for method tracked to use it)`
        : `scan: no common point known (${d.reason})`,
    };
  }

  private async rebuild(
    id: number,
    r: typeof recoveries.$inferSelect,
    v: VolumeInfo,
    source: SourceRef,
    sources: NamedSource[],
    target: "lsp" | "lgp",
    targetStore: ChunkStore,
    signal: { aborted: boolean },
  ): Promise<void> {
    await this.d.mirrorCaughtUp();
    if (target === "lgp") this.d.mirrorState(v, "inconsistent");
    const { tracked, method, reason } = await this.method(r, v, source, target);
    await serialized(
      this.d.db,
      () =>
        this.d.db.update(recoveries).set({
          method,
          methodReason: reason,
          startedAt: r.startedAt ?? Date.now(),
        })
          .where(eq(recoveries.id, id)),
    );
    const run = (
      from: NamedSource[],
      to: ChunkStore,
      at: number,
      compared: number,
      moved: number,
      persist: boolean,
    ) =>
      recover({
        sources: from,
        target: to,
        strategy: r.strategy as Strategy,
        tracked,
        verify: r.verify as Verify,
        chunkSize: r.chunkSize,
        from: at,
        bytesCompared: compared,
        bytesMoved: moved,
        signal,
        checkpoint: persist
          ? (next, c, m) =>
            serialized(this.d.db, () =>
              this.d.db.update(recoveries).set({
                checkpoint: next,
                bytesCompared: c,
                bytesMoved: m,
                chunks: Math.ceil(v.size / r.chunkSize),
              })
                .where(eq(recoveries.id, id))).then(() => {})
          : undefined,
        progress: (p) => {
          const live = this.running.get(id);
          if (live) {
            live.progress = p;
          }
          this.d.progress?.(id, p);
        },
      });
    const outcome = await run(sources, targetStore, r.checkpoint, r.bytesCompared, r.bytesMoved, true);
    if (target === "lsp" && source.kind !== "lgp") {
      // the mirror follows the volume: it takes the same content (the volume, verified equal to
      // the source now, is its reference; the remote sources still there help), then the sites
      // resynchronise
      const lgp = this.d.store(v, "lgp", undefined, true)!;
      this.d.mirrorState(v, "inconsistent");
      const live = sources.filter((s, k) => s.name !== "lgp" && outcome.sources[k]?.state !== "failed");
      await run([{ name: "lsp", store: targetStore }, ...live], lgp, 0, 0, 0, false);
    }
    if (target === "lgp" || source.kind !== "lgp") {
      this.d.mirrorState(v, "consistent");
      this.d.contentReplaced(v);
    }
    const shares = outcome.sources.map((s) =>
      `${s.name} ${mib(s.bytesMoved)}${s.state === "failed" ? ` (failed: ${s.error})` : ""}`
    ).join(", ");
    const did = outcome.method !== method
      ? `scan: the audit found ${outcome.auditMisses} of ${outcome.audited} sampled chunks outside the tracked set differing`
      : reason;
    await serialized(this.d.db, () =>
      this.d.db.update(recoveries).set({
        status: "done",
        finishedAt: Date.now(),
        checkpoint: outcome.chunks,
        chunks: outcome.chunks,
        bytesCompared: outcome.bytesCompared,
        bytesMoved: outcome.bytesMoved,
        method: outcome.method,
        methodReason: `${did}; moved from ${shares}`,
      }).where(eq(recoveries.id, id)));
    await this.d.audit.record({
      subject: `volume:${r.volume}`,
      kind: "recovery",
      from: "running",
      to: "done",
      cause: `${r.strategy} recovery of the ${target} from ${describeSource(source)}${
        source.point === undefined ? "" : ` at point ${source.point}`
      } verified`,
      detail: {
        id,
        method: outcome.method,
        sources: outcome.sources,
        audited: outcome.audited,
        bytesCompared: outcome.bytesCompared,
        bytesMoved: outcome.bytesMoved,
        seconds: outcome.seconds,
      },
    });
    log.info("recovery done", {
      id,
      volume: r.volume,
      moved: outcome.bytesMoved,
      compared: outcome.bytesCompared,
    });
  }
}

export class RecoveryError extends Error {
  constructor(readonly status: 400 | 404 | 409, message: string) {
    super(message);
  }
}

/** Estimates the bytes a fast recovery would move by comparing a sample of chunks. */
async function estimateDifference(source: ChunkStore, target: ChunkStore, size: number): Promise<number> {
  const cs = 1024 * 1024;
  const chunks = Math.ceil(size / cs);
  const samples = Math.min(32, chunks);
  let differ = 0;
  for (let s = 0; s < samples; s++) {
    const i = Math.floor(s * chunks / samples);
    const [a, b] = await Promise.all([source.hashes(cs, i, 1), target.hashes(cs, i, 1)]);
    if (a.some((x, k) => x !== b[k])) differ++;
  }
  return Math.round(size * differ / samples);
}

/** Each source's planned share of the bytes, proportional to its estimated rate. */
export function sharesOf(cs: readonly Candidate[]): { source: string; share: number; bps: number }[] {
  const total = cs.reduce((a, c) => a + c.throughputBps, 0);
  return cs.map((c) => ({
    source: c.source,
    share: total > 0 ? c.throughputBps / total : 0,
    bps: c.throughputBps,
  }));
}

function rank(kind: SourceRef["kind"]): number {
  return kind === "lgp" ? 0 : kind === "rgp" ? 1 : 2;
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}

const REACH_WAIT_MS = 60_000;
