// Persists a journal reader's position and, per volume, what its far side
// acknowledged and the state of the far copy, so a restart resumes exactly there.
import { and, eq } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { cursors, cursorVolumes } from "../db/schema.ts";

export type CopyState = "consistent" | "syncing" | "degraded";

export interface StoredVolume {
  ackedSeq: number;
  state: CopyState;
  /** Records up to this sequence number are void (a recovery undid them): never sent. */
  voidUpTo: number;
}

export interface StoredCursor {
  pos: number;
  volumes: Map<number, StoredVolume>;
}

export class CursorStore {
  constructor(private readonly db: Db) {}

  async load(name: string): Promise<StoredCursor | undefined> {
    const [c] = await this.db.select().from(cursors).where(eq(cursors.name, name));
    if (!c) return undefined;
    const rows = await this.db.select().from(cursorVolumes).where(eq(cursorVolumes.cursor, name));
    return {
      pos: c.pos,
      volumes: new Map(
        rows.map((
          r,
        ) => [r.volumeId, { ackedSeq: r.ackedSeq, state: r.state as CopyState, voidUpTo: r.voidUpTo }]),
      ),
    };
  }

  async save(name: string, pos: number, volumes: ReadonlyMap<number, StoredVolume>): Promise<void> {
    const now = Date.now();
    await serialized(this.db, () =>
      this.db.transaction(async (tx) => {
        await tx.insert(cursors).values({ name, pos, updatedAt: now })
          .onConflictDoUpdate({ target: cursors.name, set: { pos, updatedAt: now } });
        for (const [volumeId, v] of volumes) {
          const row = { ackedSeq: v.ackedSeq, state: v.state, voidUpTo: v.voidUpTo, updatedAt: now };
          await tx.insert(cursorVolumes).values({ cursor: name, volumeId, ...row })
            .onConflictDoUpdate({ target: [cursorVolumes.cursor, cursorVolumes.volumeId], set: row });
        }
      }));
  }

  async remove(name: string): Promise<void> {
    await this.db.delete(cursorVolumes).where(eq(cursorVolumes.cursor, name));
    await this.db.delete(cursors).where(eq(cursors.name, name));
  }

  async removeVolume(name: string, volumeId: number): Promise<void> {
    await this.db.delete(cursorVolumes).where(
      and(eq(cursorVolumes.cursor, name), eq(cursorVolumes.volumeId, volumeId)),
    );
  }
}
