// The journal's buffer (the paper's buffer partition): a preallocated file or
// device used as a ring of self-describing records. Positions are logical byte
// offsets that only grow; a record never straddles the end of the ring (a Wrap
// record, or a gap too short for one, fills the rest of the lap).
import {
  closeSync,
  fdatasyncSync,
  openSync,
  readSync as fsReadSync,
  writeSync as fsWriteSync,
} from "node:fs";
import * as native from "../native/mod.ts";
import {
  decodeHeader,
  encodeRecord,
  HEADER_SIZE,
  Kind,
  payloadIntact,
  payloadLength,
  type RecordHeader,
} from "../record/record.ts";
import { MAX_PAYLOAD } from "../nbd/protocol.ts";

const SUPER_MAGIC = "CNJ1";
export const DATA_START = 4096;

export interface RingEntry {
  header: RecordHeader;
  /** Header and payload as stored (72 + payload bytes). */
  bytes: Uint8Array;
}

export class Ring {
  private constructor(
    readonly path: string,
    readonly fd: number,
    readonly dataSize: number,
    readonly id: string,
  ) {}

  /**
   * Opens the ring at path, creating a file of `size` bytes if it does not exist.
   * A block device is used whole. The superblock names the ring; the database
   * records that name so a swapped buffer device is detected.
   */
  static async open(path: string, size: number): Promise<Ring> {
    let fd: number;
    let created = false;
    try {
      fd = openSync(path, "r+");
    } catch (e) {
      if ((e as { code?: string }).code !== "ENOENT") {
        throw new Error(`journal buffer ${path}: ${(e as Error).message}`);
      }
      fd = openSync(path, "w+", 0o600);
      created = true;
    }
    const blockDevice = native.isBlockDevice(fd);
    const minimum = DATA_START + 2 * (HEADER_SIZE + MAX_PAYLOAD);
    if (created && size < minimum) {
      closeSync(fd);
      Deno.removeSync(path);
      throw new Error(`journal buffer ${path} of ${size} bytes is too small: it needs at least ${minimum}`);
    }
    if (created && !blockDevice) {
      // preallocated: a full disk shows now, never as a failed journal write later
      try {
        await native.allocate(fd, 0, size);
      } catch (e) {
        closeSync(fd);
        Deno.removeSync(path);
        throw new Error(`journal buffer ${path}: cannot reserve ${size} bytes (${(e as Error).message})`);
      }
    }
    const total = native.fileSize(fd);
    if (total < DATA_START + 2 * (HEADER_SIZE + MAX_PAYLOAD)) {
      closeSync(fd);
      throw new Error(
        `journal buffer ${path} is ${total} bytes; it needs at least ${
          DATA_START + 2 * (HEADER_SIZE + MAX_PAYLOAD)
        }`,
      );
    }
    const sb = new Uint8Array(DATA_START);
    const n = readSync(fd, sb, 0);
    const text = new TextDecoder().decode(sb.subarray(0, n)).split("\0")[0];
    let id: string;
    let dataSize: number;
    const m = /^CNJ1 (\S+) (\d+)\n/.exec(text);
    if (m) {
      id = m[1];
      dataSize = Number(m[2]);
      if (dataSize + DATA_START > total) {
        closeSync(fd);
        throw new Error(`journal buffer ${path} is smaller than its superblock says`);
      }
    } else if (created || blockDevice || isAllZero(sb.subarray(0, n))) {
      id = crypto.randomUUID();
      dataSize = total - DATA_START;
      const out = new TextEncoder().encode(`${SUPER_MAGIC} ${id} ${dataSize}\n`);
      writeSync(fd, out, 0);
    } else {
      closeSync(fd);
      throw new Error(
        `journal buffer ${path} holds something other than a Continuum journal; refusing to overwrite it`,
      );
    }
    return new Ring(path, fd, dataSize, id);
  }

  physical(pos: number): number {
    return DATA_START + (pos % this.dataSize);
  }

  /**
   * Where a record of `len` bytes starting at or after `pos` goes: its position,
   * and the Wrap filler to write first when it would straddle the end.
   */
  place(pos: number, len: number): { at: number; filler?: { pos: number; bytes: Uint8Array } } {
    const inLap = pos % this.dataSize;
    if (inLap + len <= this.dataSize) return { at: pos };
    const next = pos - inLap + this.dataSize;
    if (this.dataSize - inLap < HEADER_SIZE) return { at: next };
    const filler = encodeRecord({
      kind: Kind.Wrap,
      flags: 0,
      volume: 0,
      length: this.dataSize - inLap,
      seq: 0,
      offset: 0,
      time: 0,
      pos,
    });
    return { at: next, filler: { pos, bytes: filler } };
  }

  /** Writes entries (each at its own position) with one native call. */
  async write(items: { pos: number; bytes: Uint8Array }[]): Promise<void> {
    await native.applyBatch(
      this.fd,
      items.map((i) => ({ op: "write", buf: i.bytes, off: this.physical(i.pos) })),
    );
  }

  sync(): Promise<void> {
    return native.fdatasync(this.fd);
  }

  /**
   * Reads the record stored at pos. Returns undefined when there is none (stale
   * data from an earlier lap, a torn write, a bad checksum); the caller skips a
   * returned Wrap by moving to the next lap.
   */
  async readAt(pos: number): Promise<RingEntry | undefined> {
    const inLap = pos % this.dataSize;
    if (this.dataSize - inLap < HEADER_SIZE) {
      return { header: wrapHeader(pos, this.dataSize - inLap), bytes: new Uint8Array(0) };
    }
    const head = new Uint8Array(HEADER_SIZE);
    await native.pread(this.fd, head, this.physical(pos));
    let header: RecordHeader;
    try {
      header = decodeHeader(head, MAX_PAYLOAD);
    } catch {
      return undefined;
    }
    if (header.pos !== pos) return undefined;
    if (header.kind === Kind.Wrap) return { header, bytes: head };
    const plen = payloadLength(header);
    if (inLap + HEADER_SIZE + plen > this.dataSize) return undefined;
    const bytes = new Uint8Array(HEADER_SIZE + plen);
    bytes.set(head);
    if (plen > 0) await native.pread(this.fd, bytes.subarray(HEADER_SIZE), this.physical(pos) + HEADER_SIZE);
    return payloadIntact(bytes, header) ? { header, bytes } : undefined;
  }

  /**
   * Reads the records from pos (before `limit`, about maxBytes of them) with one native
   * read: a reader catching up (a site's sender) otherwise paid two reads per record.
   * Stops at the lap's end, at a record that does not fit in what was read, and after a
   * Wrap. Returns no entries when the record at pos is missing or corrupt (as readAt).
   */
  async readRun(pos: number, limit: number, maxBytes: number): Promise<{ pos: number; entry: RingEntry }[]> {
    const inLap = pos % this.dataSize;
    const len = Math.min(Math.max(maxBytes, HEADER_SIZE), this.dataSize - inLap, limit - pos);
    if (len < HEADER_SIZE) {
      const e = await this.readAt(pos);
      return e ? [{ pos, entry: e }] : [];
    }
    const buf = new Uint8Array(len);
    const got = await native.pread(this.fd, buf, this.physical(pos));
    const out: { pos: number; entry: RingEntry }[] = [];
    let at = 0;
    while (at + HEADER_SIZE <= got) {
      const p = pos + at;
      let header: RecordHeader;
      try {
        header = decodeHeader(buf.subarray(at, at + HEADER_SIZE), MAX_PAYLOAD);
      } catch {
        break;
      }
      if (header.pos !== p) break;
      if (header.kind === Kind.Wrap) {
        out.push({ pos: p, entry: { header, bytes: buf.subarray(at, at + HEADER_SIZE) } });
        break;
      }
      const size = HEADER_SIZE + payloadLength(header);
      if (at + size > got) break;
      const bytes = buf.subarray(at, at + size);
      if (!payloadIntact(bytes, header)) break;
      out.push({ pos: p, entry: { header, bytes } });
      at += size;
    }
    if (out.length > 0) return out;
    // a record larger than maxBytes, or one that is not there: the one-record path decides
    const e = await this.readAt(pos);
    return e ? [{ pos, entry: e }] : [];
  }

  /** The position following the record at pos. */
  next(pos: number, e: RingEntry): number {
    if (e.header.kind === Kind.Wrap) return pos - (pos % this.dataSize) + this.dataSize;
    return pos + HEADER_SIZE + payloadLength(e.header);
  }

  close(): void {
    try {
      closeSync(this.fd);
    } catch { /* closed */ }
  }
}

function wrapHeader(pos: number, length: number): RecordHeader {
  return { kind: Kind.Wrap, flags: 0, volume: 0, length, seq: 0, offset: 0, time: 0, pos };
}

function isAllZero(b: Uint8Array): boolean {
  for (const x of b) if (x !== 0) return false;
  return true;
}

// superblock I/O happens once at start, so plain synchronous calls are fine here
function readSync(fd: number, buf: Uint8Array, pos: number): number {
  return fsReadSync(fd, buf, 0, buf.length, pos);
}

function writeSync(fd: number, buf: Uint8Array, pos: number): void {
  fsWriteSync(fd, buf, 0, buf.length, pos);
  fdatasyncSync(fd);
}
