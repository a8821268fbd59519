// The capture benchmark's fio jobs (nbd engine, fio's 512 MiB region), by name: the lag trace
// runs the same ones.
export const WRITE_FLUSH = "4 KiB write + flush, one at a time";

export const CAPTURE_JOBS: Record<string, string[]> = {
  "4 KiB randwrite qd1": ["--rw=randwrite", "--bs=4k", "--iodepth=1"],
  "4 KiB randwrite qd16": ["--rw=randwrite", "--bs=4k", "--iodepth=16"],
  "1 MiB seq write qd4": ["--rw=write", "--bs=1M", "--iodepth=4"],
  "4 KiB randwrite qd16, fsync=32": ["--rw=randwrite", "--bs=4k", "--iodepth=16", "--fsync=32"],
  [WRITE_FLUSH]: ["--rw=randwrite", "--bs=4k", "--iodepth=1", "--fsync=1"],
};
