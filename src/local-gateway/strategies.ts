// The tasks' mirror strategies (M) as the local gateway applies them: the control plane hands
// over a new plan when the tasks change (ControlPlane's applyMirror); each volume's strategy wins
// over the flags for that volume (its buffer bound, congestion, compression, acknowledgement
// point, retention). Whoever carries a part of it (the remote sites) hears every change.
import { logger } from "../log.ts";
import type { Journal, VolumeInfo } from "../journal/journal.ts";
import type { MirrorPlan } from "../tasks/control-plane.ts";
import type { Mirror } from "../tasks/model.ts";

const log = logger("local-gateway");

/** A new plan was applied; `announced`: what the sites' hello announces per volume changed. */
export type PlanListener = (plan: MirrorPlan, announced: boolean) => void;

export class MirrorStrategies {
  private plan: MirrorPlan = { volumes: {}, siteBandwidth: {} };
  private readonly listeners: PlanListener[] = [];

  constructor(private readonly journal: Journal) {}

  /** The strategy of a volume's task, if a started task names the volume. */
  of(v: { agent: string; name: string }): Mirror | undefined {
    return this.plan.volumes[`${v.agent}/${v.name}`];
  }

  /** Registers a listener told of every plan applied from now on. */
  onApply(l: PlanListener): void {
    this.listeners.push(l);
  }

  /** Sets the journal's bound of a volume to its task's buffer bound (none without a task). */
  applyBound(v: VolumeInfo): void {
    this.journal.setBound(v.id, this.of(v)?.bufferBound);
  }

  apply(plan: MirrorPlan): void {
    // what the hello announces per volume: its acknowledgement point and its retention
    const announced = (pl: MirrorPlan) =>
      JSON.stringify(
        this.journal.volumes().map((v) => {
          const m = pl.volumes[`${v.agent}/${v.name}`];
          return [m?.ackPoint, m?.retentionHours, m?.retentionBytes];
        }),
      );
    const changed = announced(plan) !== announced(this.plan);
    this.plan = plan;
    for (const v of this.journal.volumes()) this.applyBound(v);
    for (const l of this.listeners) l(plan, changed);
    log.info("mirror strategies applied", { volumes: Object.keys(plan.volumes).length });
  }
}
