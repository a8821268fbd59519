// The devices an agent may serve: the files and block devices directly in its --device-prefix
// directories. The agent reports them (path and size) to its gateway whenever its link comes up
// and when the list changes, so the gateway's inventory offers them without anyone typing a
// path (src/tasks/discovery.ts); an assignment outside these directories is refused.
import { logger } from "../log.ts";
import type { AgentReport } from "../wire/control.ts";

const log = logger("devices");

/** A device or image file an agent may serve. */
export interface DeviceInfo {
  path: string;
  size: number;
}

/** Whether a normalised absolute path lies inside one of the directories (not the directory itself). */
export function underPrefix(path: string, prefixes: readonly string[]): boolean {
  return prefixes.some((p) => path.startsWith(p.endsWith("/") ? p : `${p}/`) && path.length > p.length);
}

/** A directory given as --device-prefix: absolute, without '..' (trailing slash optional); else the problem. */
export function checkPrefix(dir: string): string | undefined {
  if (!dir.startsWith("/") || dir.split("/").includes("..")) {
    return `--device-prefix ${dir}: must be an absolute directory without '..'`;
  }
  return undefined;
}

/** Size of a file or block device (lseek to its end works for both); undefined when it cannot be opened. */
async function sizeOf(path: string): Promise<number | undefined> {
  try {
    using f = await Deno.open(path, { read: true });
    return await f.seek(0, Deno.SeekMode.End);
  } catch {
    return undefined;
  }
}

/**
 * The files and block devices directly in each directory (symbolic links followed, hidden
 * names skipped) whose size is a positive multiple of 512 bytes, sorted by path.
 */
export async function scanDevices(prefixes: readonly string[]): Promise<DeviceInfo[]> {
  const out = new Map<string, DeviceInfo>();
  for (const prefix of prefixes) {
    const dir = prefix.endsWith("/") ? prefix.slice(0, -1) : prefix;
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(dir));
    } catch (e) {
      log.debug("cannot list a --device-prefix directory", { dir, error: e });
      continue;
    }
    for (const e of entries) {
      if (e.name.startsWith(".")) continue;
      const path = `${dir}/${e.name}`;
      // an entry gone or unreadable since the listing is no device to offer
      const st = await Deno.stat(path).catch(() => undefined);
      if (!st || !(st.isFile || st.isBlockDevice)) continue;
      const size = await sizeOf(path);
      if (size && size % 512 === 0) out.set(path, { path, size });
    }
  }
  return [...out.values()].sort((a, b) => a.path.localeCompare(b.path));
}

/**
 * Reports the devices to the gateway: at every connection (`connected()`) and, while
 * connected, whenever a rescan every `everyMs` finds a change. Nothing is sent without
 * directories: such an agent serves whatever its gateway assigns.
 */
export class DeviceReporter {
  private last = "";
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(
    private readonly prefixes: readonly string[],
    private readonly send: (msg: Extract<AgentReport, { type: "devices" }>) => boolean,
    private readonly everyMs = 5000,
  ) {
    if (prefixes.length) {
      this.timer = setInterval(() => void this.report(false), everyMs);
      Deno.unrefTimer(this.timer);
    }
  }

  /** The link is up: the gateway gets the list now. */
  connected(): void {
    void this.report(true);
  }

  private async report(always: boolean): Promise<void> {
    if (!this.prefixes.length) return;
    const devices = await scanDevices(this.prefixes);
    const text = JSON.stringify(devices);
    if (!always && text === this.last) return;
    if (this.send({ type: "devices", devices })) this.last = text;
  }

  close(): void {
    clearInterval(this.timer);
  }
}

/** Why an assignment of `path` is refused by an agent limited to `prefixes` (none: no limit). */
export function outsidePrefixes(path: string, prefixes: readonly string[]): string | undefined {
  if (prefixes.length === 0 || underPrefix(path, prefixes)) return undefined;
  return `${path} is outside this agent's --device-prefix directories (${prefixes.join(", ")})`;
}
