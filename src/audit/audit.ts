// The audit log: every state change (detector states, promotions, switches,
// failbacks, fences) with time, cause and the values that led to it, in libsql.
import { desc } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { auditLog } from "../db/schema.ts";
import { logger } from "../log.ts";

const log = logger("audit");

export interface AuditEvent {
  subject: string;
  kind: string;
  from?: string;
  to?: string;
  cause: string;
  detail?: Record<string, unknown>;
}

export class Audit {
  constructor(private readonly db: Db) {}

  /** Records an event (and logs it); resolves once it is stored. */
  async record(e: AuditEvent): Promise<void> {
    const time = Date.now();
    log.info(e.cause, { subject: e.subject, kind: e.kind, from: e.from, to: e.to, ...e.detail });
    await serialized(this.db, () =>
      this.db.insert(auditLog).values({
        time,
        subject: e.subject,
        kind: e.kind,
        fromState: e.from ?? null,
        toState: e.to ?? null,
        cause: e.cause,
        detail: JSON.stringify(e.detail ?? {}),
      })).catch((err) => log.error("cannot store an audit event", { error: err }));
  }

  async recent(limit = 200) {
    const rows = await this.db.select().from(auditLog).orderBy(desc(auditLog.id)).limit(limit);
    return rows.map((r) => ({ ...r, detail: JSON.parse(r.detail) }));
  }
}
