// Start-up reconciliation of the service switch rules: the nat table is brought back
// to the recorded set of active switches, so nothing stale survives a crash (or a
// manual edit) and nothing recorded is missing.
import { logger } from "../log.ts";
import { applySwitches, readSwitches, type SwitchOptions } from "./iptables.ts";
import { diffRules, type RuleDiff, ruleTask, type Switch, validateSwitches } from "./rules.ts";

const log = logger("switch");

/** Rule lines removed, added and left as they were. */
export type ReconcileSummary = RuleDiff;

export async function reconcile(recorded: Switch[], opts: SwitchOptions = {}): Promise<ReconcileSummary> {
  const desired = validateSwitches(recorded);
  const before = await readSwitches(opts);
  const diff = diffRules(desired, before);
  // A first start finds no chains at all: installing them is expected, not a finding.
  const level = before.chains.length > 0 ? "warn" : "info";
  for (const rule of diff.removed) log.warn("stale switch rule", { rule, task: ruleTask(rule) });
  for (const rule of diff.added) log[level]("missing switch rule", { rule, task: ruleTask(rule) });
  await applySwitches(desired, opts);
  log.info("switch rules reconciled", {
    removed: diff.removed.length,
    added: diff.added.length,
    unchanged: diff.unchanged.length,
    netns: opts.netns,
  });
  return diff;
}
