// Something others wait on without polling: whoever changes it calls notify(), every waiter
// wakes and looks again at what it waits for (a link that came up, a recovery that ended).
export class Changes {
  private readonly waiters = new Set<() => void>();

  notify(): void {
    for (const w of [...this.waiters]) w();
  }

  /**
   * Resolves at the next notify(), after timeoutMs (none: no limit), or when `signal` aborts,
   * whichever comes first; nothing of the wait is left behind.
   */
  next(timeoutMs?: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        this.waiters.delete(done);
        resolve();
      };
      const timer = timeoutMs === undefined ? undefined : setTimeout(done, Math.max(0, timeoutMs));
      signal?.addEventListener("abort", done);
      this.waiters.add(done);
    });
  }
}

/** Resolves at the first change of any of these (or the timeout); the other waits end with it. */
export async function nextOf(timeoutMs: number | undefined, ...of: Changes[]): Promise<void> {
  const ac = new AbortController();
  try {
    await Promise.race(of.map((c) => c.next(timeoutMs, ac.signal)));
  } finally {
    ac.abort();
  }
}
