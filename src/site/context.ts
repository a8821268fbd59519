// What the remote gateway's modules share: this site's name, its journal, the replica applier
// and the replicas' states, and the feeders of its standby agents.
import type { Journal } from "../journal/journal.ts";
import type { MirrorApplier } from "../mirror/applier.ts";
import type { ReplicaStates } from "./replica-states.ts";
import type { StandbyFeeders } from "./standby-feeders.ts";

export interface SiteContext {
  /** This site's name (--id). */
  site: string;
  journal: Journal;
  applier: MirrorApplier;
  replicas: ReplicaStates;
  feeders: StandbyFeeders;
}
