// A standby server's copy of a volume (the paper's RSP): while standby, the agent's data plane
// (native/standby.c) applies the records its site's gateway streams to it, in order, and
// acknowledges them once they are on stable storage. Its position and state are kept in a slot
// file (overwritten in place, one sector write and fdatasync per applied batch) so a restart
// resumes where the disk is: written by the data plane while the copy is registered there, and
// here while it is not (assigned, demoted).
import { logger } from "../log.ts";
import * as native from "../native/mod.ts";
import { cstr, fromCstr, native as ffi, NativeError } from "../native/ffi.ts";
import type { NativeAgent } from "../capture/native-agent.ts";
import type { Volume } from "../volume/volume.ts";
import { SlotFile } from "../io/slot-file.ts";
import { hashesFrame } from "../wire/frames.ts";

const log = logger("standby");

export type StandbyState = "empty" | "consistent" | "inconsistent";

interface Persisted {
  lastSeq: number;
  state: StandbyState;
}

export class StandbyVolume {
  /** The last record the copy holds, as its slot file says (the data plane's while it applies). */
  lastSeq: number;
  /** The position on stable storage with the data it describes: what a new link resumes after. */
  durableSeq: number;
  state: StandbyState;
  /** The gateway's journal id of this volume (records name it). */
  journalId = -1;

  private constructor(
    readonly name: string,
    readonly volume: Volume,
    /** The slot file's path: the data plane writes it while the copy is registered there. */
    readonly slotPath: string,
    private file: SlotFile,
    p: Persisted,
    /** The position file of older versions, removed once the slot file holds the position. */
    private legacy: string | undefined,
  ) {
    this.lastSeq = p.lastSeq;
    this.durableSeq = p.lastSeq;
    this.state = p.state;
  }

  static async open(name: string, volume: Volume, dataDir: string): Promise<StandbyVolume> {
    const path = `${dataDir}/${name}.standby.pos`;
    const legacy = `${dataDir}/${name}.standby.json`;
    const { file, p, fromSlot } = await readPosition(path, legacy);
    return new StandbyVolume(name, volume, path, file, p, fromSlot ? undefined : legacy);
  }

  /** Reads the position the data plane saved last (it released the copy): saves go on from there. */
  async reload(): Promise<void> {
    const { file, p } = await readPosition(this.slotPath, this.legacy);
    this.file = file;
    this.lastSeq = p.lastSeq;
    this.durableSeq = p.lastSeq;
    this.state = p.state;
  }

  /** Writes position and state durably, after the data they describe is synced. */
  async persist(): Promise<void> {
    const lastSeq = this.lastSeq;
    await this.file.save(new TextEncoder().encode(JSON.stringify({ lastSeq, state: this.state })));
    this.durableSeq = lastSeq;
    if (this.legacy) {
      await Deno.remove(this.legacy).catch((e) => {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      });
      this.legacy = undefined;
    }
  }
}

async function readPosition(
  path: string,
  legacy: string | undefined,
): Promise<{ file: SlotFile; p: Persisted; fromSlot: boolean }> {
  const { file, value } = await SlotFile.open(path);
  let raw: unknown;
  try {
    raw = JSON.parse(value ? new TextDecoder().decode(value) : legacy ? await Deno.readTextFile(legacy) : "");
  } catch {
    // no position: a copy never replicated into, or whose progress is unknown (reported as is)
  }
  return { file, p: valid(raw) ? raw : { lastSeq: 0, state: "empty" }, fromSlot: value !== undefined };
}

function valid(raw: unknown): raw is Persisted {
  const p = raw as Persisted | undefined;
  return typeof p === "object" && p !== null && Number.isSafeInteger(p.lastSeq) &&
    ["empty", "consistent", "inconsistent"].includes(p.state);
}

const STATES: StandbyState[] = ["empty", "consistent", "inconsistent"];

/**
 * The standby copies in the agent's data plane, which applies the gateway's stream to them
 * (native/standby.c); this registers them, reports their positions and freezes them for a
 * promotion, and answers the gateway's hash requests.
 */
export class StandbyApplier {
  private frozen = false;

  /** Makes the agent's data plane a standby's: records are its copies' from now on. */
  constructor(readonly volumes: StandbyVolume[], private readonly agent: NativeAgent) {
    ffi().cn_agent_standby_thaw(agent.ptr);
  }

  /**
   * The gateway named its journal id for one of our volumes: the data plane applies its records
   * from now on.
   */
  opened(name: string, journalId: number): void {
    const v = this.volumes.find((x) => x.name === name);
    if (!v) return;
    v.journalId = journalId;
    if (this.frozen || !this.agent.open) return;
    const err = new Uint8Array(512);
    const r = ffi().cn_agent_standby_add(
      this.agent.ptr,
      cstr(v.name),
      journalId,
      v.volume.fd,
      BigInt(v.volume.size),
      BigInt(v.lastSeq),
      STATES.indexOf(v.state),
      cstr(v.slotPath),
      err,
      BigInt(err.length),
    );
    // its records are then refused (the link drops), and the next link's announcement tries again
    if (r < 0) {
      log.error("cannot apply the stream to a standby copy", { volume: v.name, error: fromCstr(err) });
    }
  }

  /** Where a copy is: the data plane's figures while it applies to it, else the copy's own. */
  position(v: StandbyVolume): { lastSeq: number; durableSeq: number; state: StandbyState } {
    const out = new BigUint64Array(5);
    if (
      this.agent.open &&
      ffi().cn_agent_standby_status(this.agent.ptr, cstr(v.name), new Uint8Array(out.buffer)) === 0
    ) {
      return { lastSeq: Number(out[0]), durableSeq: Number(out[1]), state: STATES[Number(out[2])] };
    }
    return { lastSeq: v.lastSeq, durableSeq: v.durableSeq, state: v.state };
  }

  /**
   * Stops applying (the copy is promoted, or the set of copies changes): what was received is
   * applied and durable with its position, later records are ignored, and the copies' own figures
   * are read back from their slot files. Throws when a copy could not apply what it received (a
   * promotion must not take it silently).
   */
  async freeze(): Promise<void> {
    this.frozen = true;
    if (!this.agent.open) return;
    const err = new Uint8Array(512);
    const r = await ffi().cn_agent_standby_freeze(this.agent.ptr, err, BigInt(err.length));
    if (r < 0) throw new NativeError("apply the standby copies", -r, fromCstr(err));
    for (const v of this.volumes) await v.reload();
  }

  /** Applies again (a demotion, or the set of copies changed): copies register as the gateway opens them. */
  thaw(): void {
    this.frozen = false;
    if (this.agent.open) ffi().cn_agent_standby_thaw(this.agent.ptr);
  }

  /**
   * Hashes a volume for a differential synchronisation. Everything received before the request is
   * written already (the data plane writes a record before it reads the next frame), and the
   * gateway sends no record before it has the hashes.
   */
  async hashes(journalId: number, chunkSize: number): Promise<Uint8Array> {
    const v = this.volumes.find((x) => x.journalId === journalId);
    if (!v || chunkSize < 4096) return hashesFrame(journalId, chunkSize, 0, new Uint8Array(0));
    const h = await native.hashRange(v.volume.fd, 0, v.volume.size, chunkSize);
    return hashesFrame(journalId, chunkSize, this.position(v).lastSeq, h);
  }
}
