// The remote gateway's replicas: each volume's state (empty, consistent, inconsistent, promoted),
// persisted with the volume in the database, and the agents whose standby is promoted (the
// service runs at this site: their copies take no more of the local site's records).
import { eq } from "drizzle-orm";
import type { Db } from "../db/db.ts";
import { serialized } from "../db/db.ts";
import { volumes as volumesTable } from "../db/schema.ts";
import type { Journal } from "../journal/journal.ts";
import { logger } from "../log.ts";

const log = logger("remote-gateway");

export type ReplicaState = "empty" | "consistent" | "inconsistent" | "promoted";

export class ReplicaStates {
  /** The agents whose standby is promoted here. */
  readonly promoted: Set<string>;

  private constructor(
    private readonly db: Db,
    private readonly states: Map<number, string>,
    journal: Journal,
  ) {
    this.promoted = new Set(
      [...states].filter(([, s]) => s === "promoted").map(([id]) => journal.volume(id)?.agent)
        .filter((a) => a !== undefined),
    );
  }

  /** The states recorded in the database (a promoted standby stays promoted across restarts). */
  static async load(db: Db, journal: Journal): Promise<ReplicaStates> {
    const states = new Map<number, string>();
    for (const row of await db.select().from(volumesTable)) states.set(row.id, row.state);
    return new ReplicaStates(db, states, journal);
  }

  get(id: number): ReplicaState {
    return (this.states.get(id) ?? "empty") as ReplicaState;
  }

  /** A volume registered here for the first time starts empty. */
  known(id: number): void {
    if (!this.states.has(id)) this.states.set(id, "empty");
  }

  /** Records a change (in memory now, in the database in the background: a failure is logged). */
  set(id: number, state: ReplicaState): void {
    if (this.states.get(id) === state) return;
    this.states.set(id, state);
    serialized(this.db, () => this.db.update(volumesTable).set({ state }).where(eq(volumesTable.id, id)))
      .catch((e) => log.error("cannot record replica state", { volume: id, error: e }));
    log.info("replica state", { volume: id, state });
  }
}
