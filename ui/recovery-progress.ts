// What a recovery's progress says to a person (pure): the method and why, the sources
// with their shares, bytes to move and moved, rate and time left.
import { bytes, duration, rate } from "./format.ts";
// the engine's own progress, as the API reports it
import type { Progress as RecoveryProgress } from "../src/recovery/engine.ts";

export interface RecoveryRow {
  id: number;
  volume: string;
  status: string;
  target: string;
  source: { kind: string; site?: string };
  also: { kind: string; site?: string }[];
  method: string;
  methodReason: string | null;
  bytesMoved: number;
  error: string | null;
  createdAt: number;
  progress: RecoveryProgress | null;
}

const METHOD: Record<string, string> = {
  full: "full copy",
  scan: "scan (both ends hashed)",
  tracked: "tracked divergence (no scan)",
  auto: "tracked if a common point is known, else scan",
};

export function methodText(m: string): string {
  return METHOD[m] ?? m;
}

export function sourceName(s: { kind: string; site?: string }): string {
  return s.kind === "lgp" ? "lgp" : `${s.kind}@${s.site}`;
}

/** One line per source: its share of what moved so far, its rate, or why it stopped. */
export function shares(p: RecoveryProgress): string[] {
  const total = p.sources.reduce((a, s) => a + s.bytesMoved, 0);
  return p.sources.map((s) =>
    `${s.name}: ${bytes(s.bytesMoved)}${
      total > 0 ? ` (${Math.round(s.bytesMoved / total * 100)} %)` : ""
    } at ${rate(s.rateBps)}${s.state === "failed" ? `, failed: ${s.error ?? "?"}` : ""}`
  );
}

/** "moved 10.0 MiB of 11.0 MiB at 50.0 MiB/s, 0.2 s left" */
export function summary(p: RecoveryProgress): string {
  const left = p.etaMs === null ? "time left unknown" : `${duration(p.etaMs)} left`;
  return `${p.phase}: moved ${bytes(p.bytesMoved)} of ${bytes(p.bytesToMove)} at ${rate(p.rateBps)}, ${
    p.phase === "done" ? "finished" : left
  }; ${p.done}/${p.chunks} chunks settled`;
}
