// A real wall-clock step for one process: libfaketime (Debian package faketime)
// preloaded into it intercepts the libc clock calls, and with
// FAKETIME_DONT_FAKE_MONOTONIC only CLOCK_REALTIME moves, as with an NTP step or
// `date -s` (Date.now() jumps; performance.now() and the runtime's timers go on).
// The offset is read from a control file, at most once a second, so a running
// process can be stepped forward and back.

const arch = Deno.build.arch === "aarch64" ? "aarch64" : "x86_64";
export const LIBFAKETIME = `/usr/lib/${arch}-linux-gnu/faketime/libfaketime.so.1`;

/** libfaketime's relative offset for a step of `seconds` (whole seconds, signed): "+300s", "-120s". */
export function offsetSpec(seconds: number): string {
  if (!Number.isInteger(seconds)) throw new RangeError(`a clock offset is whole seconds, not ${seconds}`);
  return `${seconds < 0 ? "-" : "+"}${Math.abs(seconds)}s`;
}

/** The environment that puts a process's wall clock under `controlFile`. */
export function faketimeEnv(controlFile: string): Record<string, string> {
  return {
    LD_PRELOAD: LIBFAKETIME,
    FAKETIME_TIMESTAMP_FILE: controlFile,
    FAKETIME_DONT_FAKE_MONOTONIC: "1",
    // re-read the file every second (FAKETIME_NO_CACHE would read it on every clock call)
    FAKETIME_CACHE_DURATION: "1",
  };
}

/** Sets the offset of every process started with `faketimeEnv(controlFile)`; effective within a second. */
export async function setClockOffset(controlFile: string, seconds: number): Promise<void> {
  const tmp = `${controlFile}.tmp`;
  await Deno.writeTextFile(tmp, offsetSpec(seconds) + "\n");
  await Deno.rename(tmp, controlFile); // a reader never sees a half-written offset
}

/** Whether libfaketime is mapped into the process (it was preloaded, the clock is under control). */
export async function faketimeLoaded(pid: number): Promise<boolean> {
  const maps = await Deno.readTextFile(`/proc/${pid}/maps`).catch(() => "");
  return maps.includes("libfaketime");
}

/**
 * libfaketime creates a shared-memory segment and a semaphore named by the pid of the first
 * preloaded process, and removes them only when that process exits normally: a process killed
 * leaves them in /dev/shm, one pair per test run, for good.
 */
export async function removeFaketimeShm(pid: number): Promise<void> {
  for (const f of [`faketime_shm_${pid}`, `sem.faketime_sem_${pid}`]) {
    await Deno.remove(`/dev/shm/${f}`).catch(() => {});
  }
}
