// What each remote site retains (its window, space bound and each volume's points), asked over
// the site link every few seconds for the status, /metrics and the alarms.
import type { RetentionStatus } from "../retention/retention.ts";
import type { SiteRequester } from "../wire/control.ts";

export interface SiteRetention {
  site: string;
  /** False: the site could not be asked (or answered with an error). */
  ok: boolean;
  error?: string;
  windowMs?: number;
  maxBytes?: number;
  volumes?: RetentionStatus[];
}

export class RetentionWatch {
  private seen = new Map<string, SiteRetention>();
  private timer: ReturnType<typeof setInterval> | undefined;
  private busy = false;

  constructor(
    private readonly sites: () => string[],
    private readonly request: SiteRequester,
    private readonly everyMs = 5000,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      if (this.busy) return;
      this.busy = true;
      this.poll().finally(() => this.busy = false);
    }, this.everyMs);
    Deno.unrefTimer(this.timer);
  }

  async poll(): Promise<void> {
    await Promise.all(
      this.sites().map(async (site) => {
        try {
          const a = await this.request(site, { type: "retention" }, this.everyMs);
          this.seen.set(
            site,
            a.ok === true
              ? {
                site,
                ok: true,
                windowMs: a.windowMs ?? 0,
                maxBytes: a.maxBytes ?? 0,
                volumes: a.volumes ?? [],
              }
              : { site, ok: false, error: String(a.error ?? "no reason given") },
          );
        } catch (e) {
          // a site away keeps what it said last, marked with why it is not fresh
          const last = this.seen.get(site);
          this.seen.set(site, { ...(last ?? { site, ok: false }), error: (e as Error).message });
        }
      }),
    );
  }

  status(): SiteRetention[] {
    return this.sites().map((site) => this.seen.get(site) ?? { site, ok: false, error: "not asked yet" });
  }

  close(): void {
    clearInterval(this.timer);
  }
}
