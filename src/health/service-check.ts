// The agent's service status monitor: a check run every period (tcp:HOST:PORT,
// http(s)://URL, exec:COMMAND); the service counts as failed after k failures in
// a row, healthy again after one success. Its verdict rides on the heartbeats.
import { logger } from "../log.ts";

const log = logger("service-check");

export type CheckSpec =
  | { kind: "tcp"; hostname: string; port: number }
  | { kind: "http"; url: string }
  | { kind: "exec"; command: string };

/** Parses `tcp:HOST:PORT`, `http://…`, `https://…` or `exec:COMMAND`. */
export function parseCheck(text: string): CheckSpec {
  if (text.startsWith("tcp:")) {
    const m = /^tcp:(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
    if (!m || Number(m[3]) < 1 || Number(m[3]) > 65535) {
      throw new Error(`service check "${text}": expected tcp:HOST:PORT`);
    }
    return { kind: "tcp", hostname: m[1] ?? m[2], port: Number(m[3]) };
  }
  if (text.startsWith("http://") || text.startsWith("https://")) {
    try {
      new URL(text);
    } catch {
      throw new Error(`service check "${text}": not a URL`);
    }
    return { kind: "http", url: text };
  }
  if (text.startsWith("exec:") && text.length > 5) return { kind: "exec", command: text.slice(5) };
  throw new Error(`service check "${text}": use tcp:HOST:PORT, http(s)://URL or exec:COMMAND`);
}

/** Runs one check; resolves with undefined when healthy, else why not. */
export async function runCheck(spec: CheckSpec, timeoutMs: number): Promise<string | undefined> {
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    switch (spec.kind) {
      case "tcp": {
        const conn = await Promise.race([
          Deno.connect({ hostname: spec.hostname, port: spec.port }),
          new Promise<never>((_, reject) =>
            signal.addEventListener("abort", () => reject(new Error("timed out")))
          ),
        ]);
        conn.close();
        return undefined;
      }
      case "http": {
        const r = await fetch(spec.url, { signal });
        await r.body?.cancel();
        return r.status < 400 ? undefined : `HTTP ${r.status}`;
      }
      case "exec": {
        const out = await new Deno.Command("sh", {
          args: ["-c", spec.command],
          stdout: "null",
          stderr: "null",
          signal,
        })
          .output();
        // a command killed at the timeout ends with a signal's exit code: say why it was killed
        if (out.success) return undefined;
        return signal.aborted ? `no answer within ${timeoutMs} ms` : `exit code ${out.code}`;
      }
    }
  } catch (e) {
    return signal.aborted ? `no answer within ${timeoutMs} ms` : (e as Error).message;
  }
}

export interface MonitorOptions {
  spec: CheckSpec;
  intervalMs: number;
  /** Failures in a row before the service counts as failed. */
  failures: number;
  timeoutMs?: number;
  /**
   * Until a check first passes, failures count only once this long has gone by since start:
   * the service starts after the agent exports the volume it runs on.
   */
  startGraceMs?: number;
}

/** Someone waiting for a check to pass: only a check started after it began waiting counts. */
interface PassWaiter {
  after: number;
  pass: () => void;
  fail: (e: Error) => void;
}

/**
 * Runs the check periodically and keeps the current verdict; waitHealthy() waits for the next
 * check that passes (each check's outcome is the event, no second loop checks beside it).
 */
export class ServiceMonitor {
  private consecutive = 0;
  private last = "not checked yet";
  private timer: ReturnType<typeof setTimeout> | undefined;
  private started = false;
  private stopped = false;
  /** Checks started so far, and whether one runs now. */
  private checks = 0;
  private checking = false;
  private startedAt = 0;
  /** The start grace no longer applies: a check has passed, or the agent was fenced. */
  private graceOver = false;
  private readonly waiters = new Set<PassWaiter>();
  healthy = true;

  constructor(private readonly o: MonitorOptions) {}

  start(): void {
    if (this.started) return;
    this.started = true;
    this.startedAt = performance.now();
    this.tick();
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    const check = ++this.checks;
    this.checking = true;
    const why = await runCheck(this.o.spec, this.o.timeoutMs ?? Math.max(100, this.o.intervalMs));
    this.checking = false;
    if (why === undefined) {
      if (!this.healthy) log.info("service healthy again");
      this.consecutive = 0;
      this.healthy = true;
      this.graceOver = true;
      this.last = "ok";
      for (const w of this.waiters) if (w.after < check) w.pass();
    } else {
      this.consecutive++;
      const starting = !this.graceOver && performance.now() - this.startedAt < (this.o.startGraceMs ?? 0);
      this.last = starting ? `not up yet: ${why}` : why;
      if (this.healthy && this.consecutive >= this.o.failures && !starting) {
        this.healthy = false;
        log.warn("service failed", { checks: this.consecutive, reason: why });
      }
    }
    if (!this.stopped) this.timer = setTimeout(() => this.tick(), this.o.intervalMs);
  }

  /**
   * Resolves at the first check started from now on that passes (one starts at once unless one
   * is running; the monitor starts if it had not), or rejects after timeoutMs.
   */
  waitHealthy(timeoutMs: number): Promise<void> {
    if (this.stopped) return Promise.reject(new Error("the service monitor is stopped"));
    return new Promise((resolve, reject) => {
      const end = () => {
        clearTimeout(timer);
        this.waiters.delete(w);
      };
      const w: PassWaiter = {
        after: this.checks,
        pass: () => {
          end();
          resolve();
        },
        fail: (e) => {
          end();
          reject(e);
        },
      };
      const timer = setTimeout(
        () => w.fail(new Error(`service not healthy within ${timeoutMs} ms: ${this.last}`)),
        timeoutMs,
      );
      this.waiters.add(w);
      if (!this.started) this.start();
      else if (!this.checking && !this.stopped) {
        clearTimeout(this.timer);
        this.tick();
      }
    });
  }

  /**
   * Ends the start grace for good: a fenced agent's service is down on purpose, and after the
   * fence is lifted a failback waits for the service's first passing check, not for the grace.
   */
  endGrace(): void {
    this.graceOver = true;
  }

  get detail(): string {
    return this.healthy ? this.last : `failed: ${this.last}`;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    for (const w of this.waiters) w.fail(new Error("the service monitor stopped"));
  }
}
