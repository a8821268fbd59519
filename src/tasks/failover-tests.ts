// Failover tests, the local gateway's half (the remote site's is src/failover/test-copies.ts).
// A test asks one remote site, over the site link, for a writable copy of its replica of the
// task's volume; the production service, the replication stream, the replica and the switch
// are not touched. The gateway keeps its running tests in memory and renews each at its site
// every few seconds (the site discards a test whose lease lapses). A test ends when the
// operator ends it (test-done), before a real failover, when its duration is over, when its
// site no longer holds it or cannot be reached for a lease, and at start: a restarted gateway
// knows no test, so a task left `testing` returns to `protected` (the site's lease lapses).
// Tests that end by themselves move their task with the `test-done` event, whose cause says
// why (the task's audit log and event stream show it).
import { logger } from "../log.ts";
import type { TaskStore } from "./store.ts";
import type { SiteRequester } from "../wire/control.ts";

const log = logger("failover-test");

/** A running test, as the status and the API show it. */
export interface FailoverTest {
  task: string;
  site: string;
  volume: string;
  /** The test's id at its site. */
  id: string;
  /** The replica's sequence the copy was taken at. */
  seq: number;
  /** Capture time of the newest write in the copy (the agent's wall clock); 0 when unknown. */
  time: number;
  /** NBD URI of the writable copy, at the site. */
  export: string;
  started: number;
  expires: number;
}

export interface FailoverTestsOptions {
  store: TaskStore;
  /** A control request to a remote site over its link (rejects when the link is down). */
  request: SiteRequester;
  renewMs?: number;
  /** With no renewal answered for this long, the test is over (the site discards it after as long). */
  leaseMs?: number;
}

interface Running {
  test: FailoverTest;
  /** performance.now() of the last renewal, of the start and of the end of the test's duration. */
  renewed: number;
  begun: number;
  ends: number;
}

export class FailoverTests {
  private running = new Map<string, Running>();
  private timer: ReturnType<typeof setInterval> | undefined;
  private busy = false;
  private readonly renewMs: number;
  private readonly leaseMs: number;

  constructor(private readonly o: FailoverTestsOptions) {
    this.renewMs = o.renewMs ?? 3000;
    this.leaseMs = o.leaseMs ?? 15_000;
  }

  /** Ends the tests a previous run left (tasks still `testing`), then renews and watches the running ones. */
  async start(): Promise<void> {
    for (const t of await this.o.store.listTasks()) {
      if (t.state !== "testing") continue;
      await this.settle(t.name, "the local gateway restarted during the test: its copy is discarded");
      for (const r of t.group.remotes) {
        this.o.request(r.site, { type: "test-stop", task: t.name }, 5000).catch(() => {
          /* the site discards it when its lease lapses */
        });
      }
    }
    this.timer = setInterval(() => {
      if (this.busy) return;
      this.busy = true;
      this.watch().catch((e) => log.warn("cannot watch the failover tests", { error: e }))
        .finally(() => this.busy = false);
    }, this.renewMs);
  }

  close(): void {
    clearInterval(this.timer);
  }

  list(): FailoverTest[] {
    return [...this.running.values()].map((r) => r.test);
  }

  get(task: string): FailoverTest | undefined {
    return this.running.get(task)?.test;
  }

  /**
   * Asks `site` for a test copy of `volume` (AGENT/NAME), now or at a recovery point it holds;
   * rejects with the site's reason.
   */
  async begin(
    task: string,
    volume: string,
    site: string,
    durationSeconds: number,
    point?: number | string,
  ): Promise<FailoverTest> {
    if (this.running.has(task)) throw new Error(`task ${task} already runs a failover test`);
    const answer = await this.o.request(
      site,
      { type: "test-start", task, volume, durationSeconds, ...(point === undefined ? {} : { point }) },
      120_000,
    );
    if (!answer.ok) throw new Error(`site ${site}: ${answer.error ?? "no reason given"}`);
    const t = answer.test;
    const test: FailoverTest = {
      task,
      site,
      volume,
      id: t.id,
      seq: t.seq,
      time: t.time,
      export: t.export,
      started: t.started,
      expires: t.expires,
    };
    // deadlines on this host's monotonic clock: the site's wall clock (started, expires) is for display
    const now = performance.now();
    this.running.set(task, { test, renewed: now, begun: now, ends: now + durationSeconds * 1000 });
    return test;
  }

  /** Ends a task's test: its site discards the copy (or will, when the lease lapses). */
  async end(task: string): Promise<FailoverTest | undefined> {
    const r = this.running.get(task);
    if (!r) return undefined;
    this.running.delete(task);
    const { site, id } = r.test;
    try {
      await this.o.request(site, { type: "test-stop", test: id }, 30_000);
    } catch (e) {
      log.warn("the site could not be told to discard the test copy: its lease lapses", {
        task,
        site,
        error: (e as Error).message,
      });
    }
    return r.test;
  }

  private async watch(): Promise<void> {
    const tasks = new Map((await this.o.store.listTasks()).map((t) => [t.name, t]));
    for (const [task, r] of [...this.running]) {
      const t = r.test;
      const state = tasks.get(task)?.state;
      // the transition to testing is recorded just after the copy was made: give it time
      if (state !== "testing") {
        if (performance.now() - r.begun > 10_000) {
          log.warn("a test copy without a testing task: discarded", { task, state });
          await this.end(task);
        }
        continue;
      }
      if (performance.now() >= r.ends) {
        await this.end(task);
        await this.settle(task, `its duration is over: the copy at site ${t.site} is discarded`);
        continue;
      }
      // unanswered (link down, timeout): it counts against the lease below
      const answer = await this.o.request(t.site, { type: "test-renew", test: t.id }, this.renewMs)
        .catch(() => undefined);
      if (this.running.get(task) !== r) continue; // ended meanwhile
      if (answer?.ok === true) r.renewed = performance.now();
      else if (answer) {
        this.running.delete(task);
        await this.settle(
          task,
          `site ${t.site} no longer holds the test copy (${answer.error ?? "no reason"})`,
        );
      } else if (performance.now() - r.renewed > this.leaseMs) {
        this.running.delete(task);
        await this.settle(
          task,
          `site ${t.site} did not answer for ${Math.round(this.leaseMs / 1000)} s: the test is over ` +
            "(the site discards the copy)",
        );
      }
    }
  }

  /** Records the end of a test the operator did not end. */
  private async settle(task: string, cause: string): Promise<void> {
    log.warn("failover test ended", { task, cause });
    await this.o.store.applyEvent(task, "test-done", `failover test ended: ${cause}`, "testing").catch((e) =>
      log.warn("cannot record the end of a failover test", { task, error: (e as Error).message })
    );
  }
}
