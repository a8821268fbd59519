// Asks a gateway for a recovery over its API and waits for it to end: what the recovery benches share.
import { type startTopology, waitFor } from "../tests/lib/cluster.ts";

type Topo = Awaited<ReturnType<typeof startTopology>>;

/** A recovery's row as GET /api/recoveries lists it (the fields the benches read). */
export interface RecoveryRow {
  id: number;
  status: string;
  error: string | null;
  bytesMoved: number;
  method: string;
  methodReason: string | null;
  startedAt: number;
  finishedAt: number;
}

/** Requests a recovery with `body` and resolves with its row once done; rejects when refused or failed. */
export function recoveryClient(topo: Topo): (body: Record<string, unknown>) => Promise<RecoveryRow> {
  const api = (path: string, init?: RequestInit) =>
    fetch(`http://127.0.0.1:${topo.gw.httpPort}${path}`, {
      ...init,
      headers: { authorization: `Bearer ${topo.gw.token}`, "content-type": "application/json" },
    }).then((r) => r.json());
  return async (body) => {
    const { id, error } = await api("/api/recoveries", { method: "POST", body: JSON.stringify(body) });
    if (!id) throw new Error(`recovery refused: ${error}`);
    return await waitFor(
      async () => {
        const me = (await api("/api/recoveries") as RecoveryRow[]).find((x) => x.id === id)!;
        if (me.status === "failed") throw new Error(`recovery failed: ${me.error}`);
        return me.status === "done" ? me : undefined;
      },
      600_000,
      "the recovery",
      10,
    );
  };
}
