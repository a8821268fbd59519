// The gateway's own copy of every volume (the paper's LGP; at a remote site, the replica,
// RGP): durable records are applied to the images in journal order by the journal's
// mirror thread (native/journal.c); images are synced before the journal may free the
// records. This class opens the images and answers what the rest of the gateway asks.
import { native } from "../native/ffi.ts";
import type { Kind } from "../record/record.ts";
import type { Journal, VolumeInfo } from "../journal/journal.ts";
import { Volume } from "../volume/volume.ts";
import * as io from "../native/mod.ts";

export interface MirrorApplierOptions {
  /** fdatasync the images (and free journal space) after this many bytes. */
  syncBytes?: number;
  /** …or this long after the first unsynced write. */
  syncIntervalMs?: number;
  /**
   * …or as soon as no record arrived for this long. For a copy whose sync somebody waits for
   * (a remote site acknowledges only synced records, and the local site's window waits for
   * those acknowledgements); unset, only size and interval count.
   */
  idleSyncMs?: number;
  /** Synchronisation markers, reported once the image holding them is synced. */
  onMarker?: (volume: number, kind: Kind.SyncBegin | Kind.SyncEnd) => void;
}

export class MirrorApplier {
  private images = new Map<number, Volume>();
  private started = false;
  private stopped = false;
  private holds: Promise<void> = Promise.resolve();

  constructor(private readonly journal: Journal, private readonly opts: MirrorApplierOptions = {}) {
    if (opts.onMarker) journal.onMarker(opts.onMarker);
  }

  /** Journal position through which images are synced (records before it may be freed). */
  get syncedPos(): number {
    return this.journal.mirrorPositions.synced;
  }

  /** Journal position through which every record is written to its image (not necessarily synced). */
  get appliedPos(): number {
    return this.journal.mirrorPositions.applied;
  }

  imageFd(volume: number): number {
    return this.image(volume).fd;
  }

  /** Waits until every record durable in the journal now is written to the images. */
  async caughtUp(): Promise<void> {
    const target = this.journal.positions.durable;
    while (this.appliedPos < target && !this.stopped && !this.journal.error) await this.journal.changed();
  }

  /**
   * Runs fn while no record is applied to any image (a batch being applied finishes first):
   * the images stay exactly at applied() meanwhile (a failover test copies a replica so).
   * Records keep arriving in the journal and are applied after fn.
   */
  hold<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.holds.then(async () => {
      if (!this.journal.open) throw new Error("the journal is closed");
      await native().cn_journal_mirror_hold(this.journal.ptr);
      try {
        return await fn();
      } finally {
        if (this.journal.open) native().cn_journal_mirror_release(this.journal.ptr);
      }
    });
    this.holds = run.then(() => {}, () => {});
    return run;
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
    this.journal.setImage(v, img.fd);
  }

  /** Capture time of the newest record applied to the volume's image (0: none since start). */
  appliedAt(volume: number): number {
    return this.journal.mirrorOf(volume).time;
  }

  /** Highest sequence number applied to the volume's image (not necessarily synced yet). */
  applied(volume: number): number {
    return this.journal.mirrorOf(volume).seq || (this.journal.volume(volume)?.durableSeq ?? 0);
  }

  start(): void {
    for (const v of this.journal.volumes()) this.prepare(v);
    const r = native().cn_journal_mirror_start(
      this.journal.ptr,
      BigInt(this.opts.syncBytes ?? 64 * 1024 * 1024),
      this.opts.syncIntervalMs ?? 1000,
      this.opts.idleSyncMs ?? -1,
    );
    if (r < 0) throw new io.NativeError("mirror start", -r);
    this.started = true;
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

  /** Applies what is durable, syncs the images and stops; then closes them. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.started && this.journal.open) await native().cn_journal_mirror_stop(this.journal.ptr);
    for (const img of this.images.values()) img.close();
  }
}
