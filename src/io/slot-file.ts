// A small value kept durable by overwriting in place: two 512-byte slots written
// alternately, each with a generation and a checksum. A save is one sector write
// and one fdatasync of an allocated block (no new file, no rename, no journal
// commit of metadata), and a write torn by a crash leaves the other slot valid.
import { closeSync, openSync } from "node:fs";
import { dirname } from "node:path";
import * as native from "../native/mod.ts";

const SLOT = 512;
const MAGIC = 0x50534e43; // "CNSP"
const HEAD = 16; // magic u32, value length u32, generation u64
const SUM = SLOT - 16; // XXH3-128 of the slot's bytes before it
/** The largest value a slot holds. */
export const SLOT_VALUE_MAX = SUM - HEAD;

export class SlotFile {
  /** The save in progress: saves go one after the other, each to the slot the last one did not use. */
  private saving: Promise<void> = Promise.resolve();

  private constructor(readonly path: string, private generation: number) {}

  /** Opens (creating when absent) the slot file and reads the newest intact value, if any. */
  static async open(path: string): Promise<{ file: SlotFile; value: Uint8Array | undefined }> {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      await create(path);
      return { file: new SlotFile(path, 0), value: undefined };
    }
    const slots = [0, 1].map((i) => decode(bytes.subarray(i * SLOT, (i + 1) * SLOT)))
      .filter((s) => s !== undefined);
    slots.sort((a, b) => b.generation - a.generation);
    const newest = slots[0];
    return { file: new SlotFile(path, newest?.generation ?? 0), value: newest?.value };
  }

  /** Saves a value durably (returns once it is on stable storage). */
  save(value: Uint8Array): Promise<void> {
    // a failed save was reported to its own caller; the next one still goes
    const done = this.saving.catch(() => {}).then(() => this.write(value));
    this.saving = done;
    return done;
  }

  private async write(value: Uint8Array): Promise<void> {
    if (value.length > SLOT_VALUE_MAX) {
      throw new RangeError(`a slot holds ${SLOT_VALUE_MAX} bytes, not ${value.length}`);
    }
    const generation = this.generation + 1;
    const slot = new Uint8Array(SLOT);
    const view = new DataView(slot.buffer);
    view.setUint32(0, MAGIC, true);
    view.setUint32(4, value.length, true);
    view.setBigUint64(8, BigInt(generation), true);
    slot.set(value, HEAD);
    native.xxh3(slot.subarray(0, SUM), slot.subarray(SUM));
    const fd = openSync(this.path, "r+");
    try {
      // the slot the newest value is not in: a torn write spoils only the older one
      await native.applyBatch(fd, [{ op: "write", buf: slot, off: (generation % 2) * SLOT }], true);
    } finally {
      closeSync(fd);
    }
    this.generation = generation;
  }
}

function decode(slot: Uint8Array): { generation: number; value: Uint8Array } | undefined {
  if (slot.length < SLOT) return undefined;
  const view = new DataView(slot.buffer, slot.byteOffset, SLOT);
  const length = view.getUint32(4, true);
  if (view.getUint32(0, true) !== MAGIC || length > SLOT_VALUE_MAX) return undefined;
  const sum = native.xxh3(slot.subarray(0, SUM));
  if (!sum.every((b, i) => b === slot[SUM + i])) return undefined;
  return { generation: Number(view.getBigUint64(8, true)), value: slot.slice(HEAD, HEAD + length) };
}

/** Both slots' blocks allocated and the file's name durable, so a save never changes metadata. */
async function create(path: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await Deno.writeFile(tmp, new Uint8Array(2 * SLOT), { mode: 0o600 });
  const f = await Deno.open(tmp, { write: true });
  try {
    await f.syncData();
  } finally {
    f.close();
  }
  await Deno.rename(tmp, path);
  const dir = await Deno.open(dirname(path), { read: true });
  try {
    await dir.sync();
  } finally {
    dir.close();
  }
}
