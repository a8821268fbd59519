// Opens the gateway's libsql database (a local file by default, or a libsql server
// URL), applies pending migrations, and refuses a database written by a newer
// Continuum. The file is created owner-only: it holds the journal index and state.
import { createClient } from "@libsql/client";
import { drizzle, type LibSQLDatabase } from "drizzle-orm/libsql";
import { migrate } from "drizzle-orm/libsql/migrator";
import { readMigrationFiles } from "drizzle-orm/migrator";
import { migrationsDir } from "../assets/assets.ts";
import * as schema from "./schema.ts";

export type Db = LibSQLDatabase<typeof schema>;

// src/db/migrations, read from the executable's embedded copy when compiled
export const migrationsFolder = migrationsDir();

export interface OpenedDb {
  db: Db;
  close(): void;
  /** The newest migration applied (the schema version). */
  version: number;
}

function isFileUrl(url: string): boolean {
  return url.startsWith("file:") || !url.includes(":");
}

/** Opens `url` (`file:PATH`, a bare path, or `libsql://…`/`http(s)://…`). */
export async function openDatabase(url: string, authToken?: string): Promise<OpenedDb> {
  const fileUrl = isFileUrl(url) ? (url.startsWith("file:") ? url : `file:${url}`) : undefined;
  if (fileUrl) {
    const path = fileUrl.slice("file:".length);
    try {
      Deno.statSync(path);
    } catch {
      // create it owner-only before libsql opens it
      Deno.writeFileSync(path, new Uint8Array(0), { mode: 0o600 });
    }
  }
  const client = createClient({ url: fileUrl ?? url, authToken });
  if (fileUrl) {
    // wait for a lock rather than fail, from the very first statement
    await client.execute("PRAGMA busy_timeout = 5000");
    await client.execute("PRAGMA journal_mode = WAL");
    // the journal ring's fdatasync is the durability point; the index may trail it
    await client.execute("PRAGMA synchronous = NORMAL");
  }
  const db = drizzle(client, { schema });
  const known = readMigrationFiles({ migrationsFolder });
  const newestKnown = Math.max(...known.map((m) => m.folderMillis));
  let applied = 0;
  try {
    const r = await client.execute("SELECT max(created_at) AS v FROM __drizzle_migrations");
    applied = Number(r.rows[0]?.v ?? 0);
  } catch {
    // no migrations table: a new database
  }
  if (applied > newestKnown) {
    client.close();
    throw new Error(
      `database ${url} has schema version ${applied}, newer than this Continuum knows (${newestKnown}); ` +
        "run the newer Continuum executable, or restore a backup made by this version",
    );
  }
  await migrate(db, { migrationsFolder });
  return { db, close: () => client.close(), version: newestKnown };
}

const writeQueues = new WeakMap<Db, Promise<unknown>>();

/**
 * Runs database writes of one process one at a time. libsql opens a connection
 * per transaction for a local file, and two at once collide (SQLITE_BUSY); the
 * journal's commits and the replication positions share one database.
 */
export function serialized<T>(db: Db, fn: () => Promise<T>): Promise<T> {
  const prev = writeQueues.get(db) ?? Promise.resolve();
  // the previous write's failure is its caller's: this one runs all the same
  const next = prev.catch(() => {}).then(fn);
  writeQueues.set(db, next);
  return next;
}
