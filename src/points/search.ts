// The search for the last good point of a task's volume at one remote site: the site's points
// from a known-good one to the newest are bisected (src/points/bisect.ts); each probe brings up
// a failover test copy at the point, runs the operator's check against it (src/points/check.ts)
// and discards the copy. The task is `testing` for the whole search; every probe and the result
// are in the audit log. Nothing but test copies is touched.
import type { Audit } from "../audit/audit.ts";
import type { FailoverTests } from "../tasks/failover-tests.ts";
import type { TaskStore } from "../tasks/store.ts";
import { SearchError, searchLastGood } from "./bisect.ts";
import { type CheckOutcome, runCheck } from "./check.ts";
import { PointsError, type RecoveryPoints } from "./points.ts";
import type { SitePoint } from "../wire/control.ts";
import { logger } from "../log.ts";

const log = logger("point-search");

export interface SearchRequest {
  site: string;
  /** The known-good point (sequence or checkpoint name); default: the oldest held. */
  good?: number | string;
  check: string[];
  timeoutSeconds: number;
}

export interface ProbeReport extends Omit<CheckOutcome, "passed"> {
  seq: number;
  time: number;
  passed: boolean;
}

export interface SearchReport {
  task: string;
  volume: string;
  site: string;
  /** Points between the known-good one and the newest. */
  searched: number;
  lastGood: SitePoint;
  firstBad?: SitePoint;
  probes: ProbeReport[];
}

export interface SearchDeps {
  store: TaskStore;
  audit: Audit;
  tests: Pick<FailoverTests, "begin" | "end">;
  points: Pick<RecoveryPoints, "list">;
  /** Runs a check (tests replace it). */
  check?: typeof runCheck;
}

export class PointSearch {
  private running = new Set<string>();

  constructor(private readonly d: SearchDeps) {}

  async run(task: string, volume: string, req: SearchRequest, by: string): Promise<SearchReport> {
    if (this.running.has(task)) throw new PointsError(`a search of task ${task} is running already`, 409);
    this.running.add(task);
    try {
      return await this.search(task, volume, req, by);
    } finally {
      this.running.delete(task);
    }
  }

  private async search(task: string, volume: string, req: SearchRequest, by: string): Promise<SearchReport> {
    const listed = await this.d.points.list(volume, [req.site], 100_000);
    const site = listed.sites[0];
    if (!site?.ok) throw new PointsError(`cannot list the points at site ${req.site}: ${site?.error}`, 409);
    const all = site.points ?? [];
    const from = req.good === undefined
      ? 0
      : all.findIndex((p) =>
        typeof req.good === "number" ? p.seq === req.good : p.names?.includes(req.good as string)
      );
    if (from < 0) {
      throw new PointsError(
        `the known-good point ${
          JSON.stringify(req.good)
        } is not held at site ${req.site} (expired, unknown ` +
          "or inside a resynchronisation)",
        409,
      );
    }
    const candidates = all.slice(from);
    const subject = `task:${task}`;
    await this.d.store.applyEvent(
      task,
      "failover-test",
      `search for the last good point of ${volume} at site ${req.site} by ${by}`,
      "protected",
    ).catch((e: Error & { status?: number }) => {
      throw new PointsError(e.message, e.status === 404 ? 404 : 409);
    });
    const probes: ProbeReport[] = [];
    const check = this.d.check ?? runCheck;
    try {
      const result = await searchLastGood(candidates, async (p) => {
        const test = await this.d.tests.begin(task, volume, req.site, req.timeoutSeconds + 600, p.seq)
          .catch((e: Error) => {
            throw new Error(`no test copy at point ${p.seq}: ${e.message}`);
          });
        let outcome: CheckOutcome;
        try {
          outcome = await check(req.check, test.export, req.timeoutSeconds * 1000, {
            CONTINUUM_POINT_SEQ: String(p.seq),
          });
        } finally {
          await this.d.tests.end(task);
        }
        probes.push({ seq: p.seq, time: p.time, ...outcome });
        await this.d.audit.record({
          subject,
          kind: "point-search",
          cause: `point search probe at sequence ${p.seq} (site ${req.site}): ${
            outcome.timedOut
              ? "the check timed out"
              : outcome.passed
              ? "passed"
              : `failed (exit ${outcome.code})`
          }`,
          detail: { volume, site: req.site, seq: p.seq, ...outcome },
        });
        if (outcome.timedOut) {
          throw new Error(
            `the check timed out after ${req.timeoutSeconds} s at point ${p.seq}: the search stopped`,
          );
        }
        return outcome.passed;
      }, (p) => String(p.seq));
      const report: SearchReport = {
        task,
        volume,
        site: req.site,
        searched: candidates.length,
        lastGood: result.lastGood,
        firstBad: result.firstBad,
        probes,
      };
      await this.d.audit.record({
        subject,
        kind: "point-search",
        cause: `the last good point of ${volume} at site ${req.site} is sequence ${result.lastGood.seq}` +
          (result.firstBad ? ` (the check fails from ${result.firstBad.seq})` : " (the newest)") +
          `, ${probes.length} probes over ${candidates.length} points`,
        detail: { volume, site: req.site, lastGood: result.lastGood, firstBad: result.firstBad },
      });
      return report;
    } catch (e) {
      const message = e instanceof SearchError || e instanceof Error ? e.message : String(e);
      await this.d.audit.record({
        subject,
        kind: "point-search",
        cause: `the search for the last good point of ${volume} at site ${req.site} failed: ${message}`,
        detail: { volume, site: req.site, probes },
      });
      throw new PointsError(`${message} (${probes.length} probes; nothing was changed)`, 409);
    } finally {
      await this.d.store.applyEvent(
        task,
        "test-done",
        "the search for the last good point is over",
        "testing",
      )
        .catch((e) => log.error("cannot record the end of a point search", { task, error: e }));
    }
  }
}
