// Applies journaled records, in journal order, to the gateway's own image of each
// volume (the paper's LGP). Each volume's records in a batch go to its image with
// one native call; images are fdatasync'd before the journal may free the records.
import { logger } from "../log.ts";
import type { BatchOp } from "../native/mod.ts";
import * as native from "../native/mod.ts";
import { betweenSeqs, Kind, recordOp } from "../record/record.ts";
import type { Cursor, Journal, JournalEntry, VolumeInfo } from "../journal/journal.ts";
import { Volume } from "../volume/volume.ts";

const log = logger("mirror");

export interface MirrorApplierOptions {
  /** fdatasync the images (and free journal space) after this many bytes. */
  syncBytes?: number;
  /** …or this long after the first unsynced write. */
  syncIntervalMs?: number;
  /**
   * …or as soon as no record arrived for this long. For a copy whose sync somebody
   * waits for (a remote site acknowledges only synced records, and the local site's
   * window waits for those acknowledgements); unset, only size and interval count.
   */
  idleSyncMs?: number;
  /** Synchronisation markers, reported once the image holding them is synced. */
  onMarker?: (volume: number, kind: Kind.SyncBegin | Kind.SyncEnd) => void;
}

export class MirrorApplier {
  private images = new Map<number, Volume>();
  private cursor!: Cursor;
  private appliedSeq = new Map<number, number>();
  private appliedTime = new Map<number, number>();
  private stopped = false;
  private done: Promise<void> | undefined;
  private signal = { aborted: false };
  /** A hold in progress (see hold): the loop applies nothing until it settles. */
  private holding: Promise<void> | undefined;
  /** The batch being applied, if any. */
  private applying: Promise<unknown> = Promise.resolve();
  private readonly syncBytes: number;
  private readonly syncIntervalMs: number;
  /** Journal position through which every record is written to its image (not necessarily synced). */
  appliedPos = 0;

  constructor(private readonly journal: Journal, private readonly opts: MirrorApplierOptions = {}) {
    this.syncBytes = opts.syncBytes ?? 64 * 1024 * 1024;
    this.syncIntervalMs = opts.syncIntervalMs ?? 1000;
  }

  /** Journal position through which images are synced (records before it may be freed). */
  get syncedPos(): number {
    return this.cursor.released;
  }

  imageFd(volume: number): number {
    return this.image(volume).fd;
  }

  /** Waits until every record durable in the journal now is written to the images. */
  async caughtUp(): Promise<void> {
    const target = this.journal.positions.durable;
    while (this.appliedPos < target && !this.stopped) await new Promise((r) => setTimeout(r, 5));
  }

  /**
   * Runs fn while no record is applied to any image (a batch being applied finishes first):
   * the images stay exactly at applied() meanwhile (a failover test copies a replica so).
   * Records keep arriving in the journal and are applied after fn.
   */
  async hold<T>(fn: () => Promise<T>): Promise<T> {
    while (this.holding) await this.holding;
    let release!: () => void;
    this.holding = new Promise((r) => release = r);
    try {
      await this.applying.catch(() => {});
      return await fn();
    } finally {
      this.holding = undefined;
      release();
    }
  }

  /** Opens (creating sparse if needed) the image of a volume. */
  prepare(v: VolumeInfo): void {
    if (this.images.has(v.id)) return;
    Deno.mkdirSync(v.mirrorPath.replace(/\/[^/]*$/, ""), { recursive: true, mode: 0o700 }); // owner-only, as the image
    const img = Volume.createSparse(v.mirrorPath, v.size);
    if (img.size !== v.size) {
      img.close();
      throw new Error(`mirror image ${v.mirrorPath} is ${img.size} bytes, expected ${v.size}`);
    }
    this.images.set(v.id, img);
  }

  /** Capture time of the newest record applied to the volume's image (0: none since start). */
  appliedAt(volume: number): number {
    return this.appliedTime.get(volume) ?? 0;
  }

  /** Highest sequence number applied to the volume's image (not necessarily synced yet). */
  applied(volume: number): number {
    return this.appliedSeq.get(volume) ?? this.journal.volume(volume)?.durableSeq ?? 0;
  }

  async start(): Promise<void> {
    for (const v of this.journal.volumes()) this.prepare(v);
    const from = await this.journal.storedAppliedPos();
    this.cursor = this.journal.cursor("mirror", from);
    this.appliedPos = this.cursor.position;
    this.done = this.loop();
  }

  private async loop(): Promise<void> {
    let unsynced = 0;
    let firstUnsynced = 0;
    const touched = new Set<number>();
    let lastEnd = this.cursor.position;
    let markers: { volume: number; kind: Kind.SyncBegin | Kind.SyncEnd }[] = [];
    // the images' sync runs while the next batch is applied: a site's acknowledgements
    // wait for it, so applying and syncing one after the other halved catch-up speed
    let syncing: Promise<void> | undefined;
    let syncError: unknown;
    while (!this.stopped) {
      if (syncError) throw syncError;
      // unsynced writes wait for the interval; entries that wrote nothing (barriers, markers) are released at once
      const waitMs = unsynced > 0
        ? Math.max(
          1,
          Math.min(this.opts.idleSyncMs ?? Infinity, firstUnsynced + this.syncIntervalMs - performance.now()),
        )
        : lastEnd > this.cursor.released
        ? 1
        : 0;
      const entries = await this.nextOrTimeout(waitMs);
      if (this.stopped) break;
      if (entries.length > 0) {
        while (this.holding) await this.holding;
        // from here to the assignment of `applying` nothing awaits: a hold sees the whole batch
        // (its sequence numbers and its writes) or none of it
        const byVolume = new Map<number, BatchOp[]>();
        for (const e of entries) {
          lastEnd = e.end;
          if (e.header.kind !== Kind.Wrap && !betweenSeqs(e.header)) {
            this.appliedSeq.set(e.header.volume, e.header.seq);
            this.appliedTime.set(e.header.volume, e.header.time);
          }
          if (e.header.kind === Kind.SyncBegin || e.header.kind === Kind.SyncEnd) {
            markers.push({ volume: e.header.volume, kind: e.header.kind });
          }
          const op = recordOp(e.header, e.bytes);
          if (!op) continue;
          const list = byVolume.get(e.header.volume) ?? [];
          list.push(op);
          byVolume.set(e.header.volume, list);
          unsynced += e.bytes.length;
        }
        if (unsynced > 0 && firstUnsynced === 0) firstUnsynced = performance.now();
        this.applying = Promise.all([...byVolume].map(([id, ops]) => {
          touched.add(id);
          return this.applyRetrying(id, ops);
        }));
        await this.applying;
        this.appliedPos = lastEnd;
      }
      const due = unsynced >= this.syncBytes ||
        (unsynced > 0 && performance.now() - firstUnsynced >= this.syncIntervalMs) ||
        (unsynced > 0 && entries.length === 0 && this.opts.idleSyncMs !== undefined) ||
        (entries.length === 0 && unsynced === 0 && lastEnd > this.cursor.released);
      if (due) {
        await syncing; // one sync at a time, in order
        if (syncError) throw syncError;
        const fds = [...touched].map((id) => this.image(id).fd);
        const end = lastEnd, reached = markers;
        touched.clear();
        unsynced = 0;
        firstUnsynced = 0;
        markers = [];
        syncing = this.sync(fds, end, reached).catch((e) => {
          syncError = e;
        });
      }
    }
    await syncing;
    if (syncError) throw syncError;
  }

  /** Syncs the images, then frees the journal through end and reports the markers applied before it. */
  private async sync(
    fds: number[],
    end: number,
    markers: { volume: number; kind: Kind.SyncBegin | Kind.SyncEnd }[],
  ): Promise<void> {
    await Promise.all(fds.map((fd) => native.fdatasync(fd)));
    this.journal.setAppliedPos(end);
    this.cursor.release(end);
    for (const m of markers) this.opts.onMarker?.(m.volume, m.kind);
  }

  /**
   * A full disk under an image (ENOSPC, EDQUOT) is waited out, not fatal: the batch is
   * applied again (writes, zeroes and trims at fixed offsets are idempotent) until space
   * is freed. Before, the rejection of this loop was unhandled and took the whole gateway
   * down (found by the fault runner, tests/faults/; regression: tests/unit-mirror-full.test.ts).
   * Meanwhile the journal keeps the records and its backpressure slows the writers.
   */
  private async applyRetrying(id: number, ops: BatchOp[]): Promise<void> {
    for (let wait = 50, warned = false;; wait = Math.min(wait * 2, 1000)) {
      try {
        return await native.applyBatch(this.image(id).fd, ops);
      } catch (e) {
        const full = e instanceof native.NativeError && (e.code === "ENOSPC" || e.code === "EDQUOT");
        if (!full || this.stopped) throw e;
        if (!warned) log.warn("image disk full: waiting for space", { volume: id, error: e.message });
        warned = true;
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  private image(id: number): Volume {
    let img = this.images.get(id);
    if (!img) {
      const v = this.journal.volume(id);
      if (!v) throw new Error(`journal record for unknown volume ${id}`);
      this.prepare(v);
      img = this.images.get(id)!;
    }
    return img;
  }

  private async nextOrTimeout(waitMs: number): Promise<JournalEntry[]> {
    if (waitMs <= 0) return await this.cursor.next(32 * 1024 * 1024, this.signal);
    const abort = { aborted: false };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const r = await Promise.race([
      this.cursor.next(32 * 1024 * 1024, abort),
      new Promise<JournalEntry[]>((res) => timer = setTimeout(() => res([]), waitMs)),
    ]);
    clearTimeout(timer);
    abort.aborted = true;
    return r;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.signal.aborted = true;
    this.journal.wakeAll();
    await this.done?.catch((e) => log.error("mirror applier failed", { error: e }));
    for (const img of this.images.values()) {
      await native.fdatasync(img.fd).catch(() => {});
      img.close();
    }
  }
}
