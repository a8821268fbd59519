// Images of volumes at recovery points, rebuilt on demand for a recovery that reads chunks "at a
// point" from this site (the local site rebuilding its volume from here). One image per volume
// and point, kept while it is read and discarded after an idle spell, at close and at start.
import { Volume } from "../volume/volume.ts";
import type { Retention } from "./retention.ts";

const IDLE_MS = 10 * 60_000;

interface Held {
  image: Promise<Volume>;
  path: string;
  used: number;
}

export class PointImages {
  private held = new Map<string, Held>();
  private readonly timer: ReturnType<typeof setInterval>;

  private constructor(private readonly dir: string, private readonly retention: Retention) {
    this.timer = setInterval(() => this.evict(performance.now() - IDLE_MS), 30_000);
    Deno.unrefTimer(this.timer);
  }

  /** Removes what a previous run left in `dir`. */
  static async open(dir: string, retention: Retention): Promise<PointImages> {
    // a first run has nothing to remove; mkdir below fails loudly if the directory is unusable
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    return new PointImages(dir, retention);
  }

  /** The image of `volume` (AGENT/NAME) at `point`, rebuilt on first use. */
  get(volume: string, point: number | string): Promise<Volume> {
    const l = this.retention.log(volume);
    const p = l.resolve(point);
    // keyed by the resolved sequence: a checkpoint name and its number share one image
    const key = `${volume}#${p.seq}`;
    let h = this.held.get(key);
    if (!h) {
      const path = `${this.dir}/${crypto.randomUUID().slice(0, 8)}.img`;
      const image = l.materialize(p, path).then(() => Volume.open(path, { readOnly: true }));
      h = { image, path, used: performance.now() };
      this.held.set(key, h);
      // the failure goes to whoever awaits the image; here only its partial file goes
      image.catch(() => {
        this.held.delete(key);
        Deno.remove(path).catch(() => {});
      });
    }
    h.used = performance.now();
    return h.image;
  }

  private async evict(before: number): Promise<void> {
    for (const [key, h] of [...this.held]) {
      if (h.used > before) continue;
      this.held.delete(key);
      // an image that failed was reported to its reader and its file removed then
      (await h.image.catch(() => undefined))?.close();
      await Deno.remove(h.path).catch(() => {});
    }
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.evict(Infinity);
  }
}
