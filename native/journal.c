// The gateway's write cache (the paper's buffer partition): a preallocated ring of
// self-describing records, appended by the agents' sessions (and a remote site's stream),
// made durable by group commit, read back in order by the mirror applier and by
// TypeScript's readers (one per remote site). A record's space is reused only once every
// reader released it; a full ring makes appenders wait, it never drops a record.
//
// Positions are logical byte offsets that only grow; a record never straddles the ring's
// end (a Wrap record, or a gap too short for one, fills the rest of the lap). The
// superblock (the first 4 KiB) names the ring and holds two checkpoint slots written with
// each commit: the tail, the durable head and the mirror's position. A FLUSH costs one
// fdatasync of the ring; the libsql index follows from the committed positions.
#include "journal.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define DATA_START 4096u
#define CK_OFFSET 2048u
#define CK_SLOT 512u
#define CK_MAGIC 0x434e4a4bu /* "CNJK" */
#define CK_VERSION 1u
#define RES_CAP 256u
#define TIMES_CAP 65536u
#define HELD_CAP 1024u
#define MAX_CURSORS 64
#define MIRROR_BATCH (32u * 1024 * 1024)
#define MIRROR_PIECE (1u << 20) // the mirror applier's buffer

typedef struct {
  uint64_t end, bytes;
} held_t;

typedef struct {
  uint64_t size;
  uint64_t last_seq, durable_seq, committing_seq;
  bool changed; // last_seq moved since the committer's snapshot
  int image_fd;
  uint64_t bound, held;
  held_t *fifo; // this volume's records in the ring (merged when full), oldest first
  uint32_t fifo_first, fifo_n;
  uint64_t mirror_seq, mirror_time;
} jvol_t;

typedef struct {
  uint64_t start, end;
  bool done;
} res_t;

typedef struct {
  bool used, required;
  uint64_t released;
  uint64_t pace; // a reader in step: appends wait while it is this many bytes behind (0: not paced)
} cursor_t;

typedef struct {
  uint32_t vol;
  uint8_t kind;
} marker_t;

struct cn_journal {
  cn_plane *plane;
  int fd;
  char path[4096];
  char ring_id[40];
  uint64_t data_size;
  const uint8_t *map;
  size_t map_len;
  pthread_mutex_t mu;
  pthread_cond_t space_cv, commit_cv, progress_cv, mirror_cv, sync_cv;
  // positions
  uint64_t head, written, durable, tail, tail_durable, retain;
  res_t res[RES_CAP];
  uint32_t res_first, res_n;
  uint64_t barrier_at;
  int64_t first_unsynced_ns, dirty_since_ns;
  int64_t commit_delay_ns;
  /** Commit once appends paused this long (-1: never for a pause alone); when the last one ended. */
  int64_t commit_idle_ns, last_written_ns;
  uint64_t commit_bytes;
  bool state_dirty;
  uint64_t ck_gen;
  uint32_t waiting; // appends waiting for space
  int64_t last_pressure;
  uint32_t paced; // readers with an allowance (none: appends skip the lag check)
  // volumes (pointers never move)
  jvol_t **vols;
  uint32_t nvols;
  cursor_t cursors[MAX_CURSORS];
  // times of recent appends, for readers' lag
  struct {
    uint64_t end;
    int64_t t;
  } *times;
  uint64_t times_n;
  // statistics since the last status read
  uint64_t records_total, indexed_records, since_first, since_last, commits;
  uint64_t pending_records, pending_first, pending_last; // appended, not yet committed
  int failure;
  bool closing;
  durable_fn on_durable;
  void *on_durable_ctx;
  // a group commit in progress (by the committer, or inline by an appender that waits for it)
  bool committing;
  uint32_t *c_ids; // per volume, the commit's snapshot (nvols long; regrown while no commit runs)
  uint64_t *c_seqs;
  // the mirror applier
  bool mirror_on, mirror_stop, mirror_joined, hold, in_batch;
  uint64_t mirror_applied, mirror_released;
  uint64_t sync_bytes;
  int64_t sync_interval_ns, idle_sync_ns;
  // a sync handed to the syncer
  bool sync_busy, sync_has_job;
  bool space_wanted; // an append waits for space: the mirror syncs what it applied now, to release it
  uint64_t sync_end;
  int *sync_fds;
  uint32_t sync_nfds;
  marker_t *sync_markers;
  uint32_t sync_nmarkers;
  uint8_t *mirror_buf; // MIRROR_PIECE bytes: a write's payload on its way from the ring to its image
  pthread_t committer, mirror_thr, syncer_thr;
};

static void *committer_main(void *arg);

static void jlog(cn_journal *j, int level, const char *msg, const char *fields) {
  plane_log(j->plane, level, "journal", msg, fields);
}

static uint64_t physical(cn_journal *j, uint64_t pos) { return DATA_START + pos % j->data_size; }

static jvol_t *vol(cn_journal *j, uint32_t id) { return id < j->nvols ? j->vols[id] : NULL; }

// ---- opening: the superblock, the checkpoint, the walk past it ----

typedef struct {
  uint64_t gen, tail, head, mirror;
} ck_t;

static bool read_checkpoint(cn_journal *j, ck_t *out) {
  bool found = false;
  for (int s = 0; s < 2; s++) {
    uint8_t b[64];
    if (io_pread(j->fd, b, sizeof b, CK_OFFSET + (uint64_t)s * CK_SLOT) != sizeof b) continue;
    if (get32(b) != CK_MAGIC || get32(b + 4) != CK_VERSION) continue;
    uint8_t sum[16];
    hash128(b, 40, sum);
    if (memcmp(sum, b + 40, 16) != 0) continue; // a torn slot
    ck_t c = {get64(b + 8), get64(b + 16), get64(b + 24), get64(b + 32)};
    if (!found || c.gen > out->gen) *out = c;
    found = true;
  }
  return found;
}

static int write_checkpoint(cn_journal *j, uint64_t gen, uint64_t tail, uint64_t head, uint64_t mirror) {
  uint8_t b[64] = {0};
  put32(b, CK_MAGIC);
  put32(b + 4, CK_VERSION);
  put64(b + 8, gen);
  put64(b + 16, tail);
  put64(b + 24, head);
  put64(b + 32, mirror);
  hash128(b, 40, b + 40);
  int64_t r = io_pwrite(j->fd, b, sizeof b, CK_OFFSET + (gen % 2) * CK_SLOT);
  return r < 0 ? (int)r : 0;
}

/** Whether the header bytes b decode into *h as the record at pos (a copy of the ring's bytes there). */
static bool header_is(const uint8_t *b, uint64_t pos, rec_t *h) {
  return rec_decode(b, REC_HEADER, MAX_PAYLOAD, h) == NULL && h->pos == pos;
}

/**
 * Reads the header of the record at pos into hb (REC_HEADER bytes, with pread) and decodes it;
 * returns the record's total length, or 0 when the bytes there are not that record or it would
 * overrun its lap. A Wrap, or a lap's end too short for a header (hb not read, h->kind set to
 * Wrap), is the rest of the lap.
 */
static uint64_t header_at(cn_journal *j, uint64_t pos, uint8_t *hb, rec_t *h) {
  uint64_t in_lap = pos % j->data_size;
  if (j->data_size - in_lap < REC_HEADER) {
    h->kind = K_WRAP;
    return j->data_size - in_lap;
  }
  if (io_pread(j->fd, hb, REC_HEADER, physical(j, pos)) != REC_HEADER || !header_is(hb, pos, h)) return 0;
  if (h->kind == K_WRAP) return j->data_size - in_lap;
  uint64_t len = REC_HEADER + rec_payload_len(h->kind, h->length);
  return in_lap + len > j->data_size ? 0 : len;
}

/**
 * Reads and verifies the record at pos; returns its total length (Wrap: the rest of the lap), or 0.
 * Only a payload check reads the ring's mapping.
 */
static uint64_t record_at(cn_journal *j, uint64_t pos, rec_t *h, bool check_payload) {
  uint8_t hb[REC_HEADER];
  uint64_t len = header_at(j, pos, hb, h);
  if (len && h->kind != K_WRAP && check_payload && !rec_payload_ok(j->map + physical(j, pos), len, h)) return 0;
  return len;
}

static uint64_t next_pos(cn_journal *j, uint64_t pos, const rec_t *h, uint64_t len) {
  if (h->kind == K_WRAP) return pos - pos % j->data_size + j->data_size;
  return pos + len;
}

/**
 * Gives back the mapping's pages of [from, to) once read: they stay in the page cache, but
 * they no longer count as this process's memory (a 1 GiB ring would otherwise show as 1 GiB).
 */
static void unmap_read(cn_journal *j, uint64_t from, uint64_t to) {
  if (to <= from) return;
  if (to - from >= j->data_size) {
    madvise((void *)(j->map + DATA_START), j->data_size, MADV_DONTNEED);
    return;
  }
  for (uint64_t p = from; p < to;) {
    uint64_t lap_end = p - p % j->data_size + j->data_size, end = MIN(to, lap_end);
    uintptr_t a = (uintptr_t)(j->map + physical(j, p)), b = a + (end - p);
    a &= ~(uintptr_t)4095;
    b &= ~(uintptr_t)4095; // a partly read last page stays: the next read continues in it
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
    p = end;
  }
}

static void format_uuid(char *out) {
  uint8_t r[16];
  random_bytes(r, sizeof r);
  r[6] = (uint8_t)((r[6] & 0x0f) | 0x40);
  r[8] = (uint8_t)((r[8] & 0x3f) | 0x80);
  sprintf(out, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4],
          r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
}

static void info_error(char *info, uint64_t cap, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  json_t jj;
  json_begin(&jj, info, cap);
  json_str(&jj, "error", msg);
  json_end(&jj);
}

/**
 * Writes a new ring file through once (zeroes, synced): its blocks are then written extents, and
 * no group commit of the first lap converts one. Its pages stay in the page cache, as they do once
 * a ring has gone round: a record written into a page that is not there, and that it only partly
 * fills, would first read the page from the disk.
 */
static int write_through(int fd, uint64_t size) {
  enum { PIECE = 4 << 20, PAGE = 4096 };
  static const uint8_t zeroes[PAGE];
  int r = 0;
  for (uint64_t off = 0; off < size && r == 0; off += PIECE) {
    uint64_t n = size - off < PIECE ? size - off : PIECE;
    // a page per write: the page cache then holds the ring in single pages, which the ring's small
    // appends need (one 4 MiB write makes large folios, and ext4 walks each folio's every block on
    // every write into it: 7 % of all the CPU at 4 KiB qd16)
    for (uint64_t p = 0; p < n && r == 0; p += PAGE) {
      int64_t w = io_pwrite(fd, zeroes, MIN(PAGE, n - p), off + p);
      if (w < 0) r = (int)w;
    }
    // writeback starts piece by piece: the final sync does not find the whole file dirty
    if (r == 0) sync_file_range(fd, (off_t)off, (off_t)n, SYNC_FILE_RANGE_WRITE);
  }
  if (r == 0 && fdatasync(fd) < 0) r = -errno;
  return r;
}

static int open_ring(cn_journal *j, const char *path, uint64_t size, int32_t flags, char *info, uint64_t cap) {
  bool created = false;
  j->fd = open(path, O_RDWR | O_CLOEXEC);
  if (j->fd < 0 && errno == ENOENT) {
    j->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    created = true;
  }
  if (j->fd < 0) {
    info_error(info, cap, "journal buffer %s: %s", path, strerror(errno));
    return -errno;
  }
  struct stat st;
  fstat(j->fd, &st);
  bool blockdev = S_ISBLK(st.st_mode);
  uint64_t minimum = DATA_START + 2ull * (REC_HEADER + MAX_PAYLOAD);
  if (created && size < minimum) {
    close(j->fd);
    j->fd = -1;
    unlink(path);
    info_error(info, cap, "journal buffer %s of %llu bytes is too small: it needs at least %llu", path,
               (unsigned long long)size, (unsigned long long)minimum);
    return -EINVAL;
  }
  if (created && !blockdev) {
    // preallocated: a full disk shows now, never as a failed journal write later
    int r = posix_fallocate(j->fd, 0, (off_t)size);
    if (r != 0) {
      close(j->fd);
    j->fd = -1;
      unlink(path);
      info_error(info, cap, "journal buffer %s: cannot reserve %llu bytes (%s)", path, (unsigned long long)size,
                 strerror(r));
      return -r;
    }
    if ((flags & CN_JOURNAL_WRITE_THROUGH) && (r = write_through(j->fd, size)) < 0) {
      close(j->fd);
      j->fd = -1;
      unlink(path);
      info_error(info, cap, "journal buffer %s: cannot write its %llu bytes through (%s)", path,
                 (unsigned long long)size, strerror(-r));
      return r;
    }
  }
  int64_t total = cn_size(j->fd);
  if (total < (int64_t)minimum) {
    close(j->fd);
    j->fd = -1;
    info_error(info, cap, "journal buffer %s is %lld bytes; it needs at least %llu", path, (long long)total,
               (unsigned long long)minimum);
    return -EINVAL;
  }
  char sb[DATA_START + 1];
  memset(sb, 0, sizeof sb);
  io_pread(j->fd, (uint8_t *)sb, DATA_START, 0);
  char id[64];
  unsigned long long ds = 0;
  bool all_zero = true;
  for (size_t i = 0; i < CK_OFFSET; i++) all_zero = all_zero && sb[i] == 0;
  if (sscanf(sb, "CNJ1 %63s %llu\n", id, &ds) == 2 && strlen(id) < sizeof j->ring_id) {
    if (ds + DATA_START > (uint64_t)total) {
      close(j->fd);
    j->fd = -1;
      info_error(info, cap, "journal buffer %s is smaller than its superblock says", path);
      return -EINVAL;
    }
    strcpy(j->ring_id, id);
    j->data_size = ds;
  } else if (created || blockdev || all_zero) {
    format_uuid(j->ring_id);
    j->data_size = (uint64_t)total - DATA_START;
    char text[128];
    int n = snprintf(text, sizeof text, "CNJ1 %s %llu\n", j->ring_id, (unsigned long long)j->data_size);
    uint8_t block[CK_OFFSET] = {0};
    memcpy(block, text, (size_t)n);
    if (io_pwrite(j->fd, block, sizeof block, 0) < 0 || fdatasync(j->fd) < 0) {
      close(j->fd);
    j->fd = -1;
      info_error(info, cap, "journal buffer %s: cannot write its superblock", path);
      return -EIO;
    }
  } else {
    close(j->fd);
    j->fd = -1;
    info_error(info, cap, "journal buffer %s holds something other than a Continuum journal; refusing to overwrite it",
               path);
    return -EEXIST;
  }
  j->map_len = DATA_START + j->data_size;
  void *m = mmap(NULL, j->map_len, PROT_READ, MAP_SHARED, j->fd, 0);
  if (m == MAP_FAILED) {
    int e = errno;
    close(j->fd);
    j->fd = -1;
    info_error(info, cap, "journal buffer %s: cannot map it (%s)", path, strerror(e));
    return -e;
  }
  j->map = m;
  return 0;
}

/** Frees a journal that failed to open, with its ring's map and file if they were set up. */
static void discard(cn_journal *j) {
  if (j->map) munmap((void *)j->map, j->map_len);
  if (j->fd >= 0) close(j->fd);
  for (uint32_t i = 0; i < j->nvols; i++) {
    if (j->vols[i]) free(j->vols[i]->fifo);
    free(j->vols[i]);
  }
  free(j->times);
  free(j->vols);
  free(j->c_ids);
  free(j->c_seqs);
  free(j);
}

EXPORT cn_journal *cn_journal_open(cn_plane *p, const char *path, uint64_t size, uint64_t db_tail, uint64_t db_head,
                                   uint64_t db_mirror, const uint8_t *vols, uint32_t nvols, int32_t commit_delay_ms,
                                   int32_t commit_idle_ms, uint64_t commit_bytes, uint64_t retain_bytes,
                                   int32_t flags, char *info, uint64_t infocap) {
  cn_journal *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->fd = -1;
  j->plane = p;
  snprintf(j->path, sizeof j->path, "%s", path);
  j->times = calloc(TIMES_CAP, sizeof *j->times);
  j->vols = calloc(1, sizeof(jvol_t *));
  if (!j->times || !j->vols || open_ring(j, path, size, flags, info, infocap) < 0) {
    discard(j);
    return NULL;
  }
  j->commit_delay_ns = (int64_t)commit_delay_ms * 1000000;
  j->commit_idle_ns = commit_idle_ms >= 0 ? (int64_t)commit_idle_ms * 1000000 : -1;
  j->commit_bytes = commit_bytes ? commit_bytes : 32u << 20;
  j->retain = retain_bytes;
  ck_t ck = {0, db_tail, db_head, db_mirror};
  bool has_ck = read_checkpoint(j, &ck);
  j->ck_gen = has_ck ? ck.gen : 0;
  j->tail = j->tail_durable = ck.tail;
  j->mirror_released = j->mirror_applied = MAX(ck.mirror, ck.tail);
  // records past the index were written before a crash, or since: they are found by walking
  // the ring from the index's head, each the next of its volume's sequence (sequence.ts admit)
  uint64_t pos = MAX(MIN(db_head, ck.head), ck.tail), from = pos;
  bool seqs_known = pos == db_head; // the index's sequences describe its head
  uint64_t count = 0, first = 0, last = 0;
  typedef struct {
    uint32_t id;
    uint64_t last;
    bool rebase, seen;
  } walk_t;
  walk_t *w = calloc(nvols + 1, sizeof *w);
  for (uint32_t i = 0; w && i < nvols; i++) w[i] = (walk_t){get32(vols + 12 * i), get64(vols + 12 * i + 4), false, false};
  while (w && pos - j->tail < j->data_size) {
    rec_t h;
    uint64_t len = record_at(j, pos, &h, true);
    if (len == 0) break;
    if (h.kind != K_WRAP) {
      walk_t *v = NULL;
      for (uint32_t i = 0; i < nvols && !v; i++) {
        if (w[i].id == h.volume) v = &w[i];
      }
      if (!v) break; // no volume of this journal: stale data
      // before the checkpoint's head every record was written and synced before the checkpoint:
      // it is this lap's, whatever sequence the index expects (an index is never the truth here)
      bool committed = has_ck && pos < ck.head;
      bool ok;
      if (h.kind == K_SYNC_BEGIN) ok = v->rebase = true;
      else if (rec_between(&h)) ok = committed || (v->rebase ? h.seq == 0 : h.seq == v->last);
      else if (committed || v->rebase || (!seqs_known && !v->seen)) {
        ok = true;
        v->rebase = false;
        v->last = h.seq;
      } else {
        ok = h.seq == v->last + 1;
        if (ok) v->last = h.seq;
      }
      // anything but the next record of its volume is stale data from an earlier lap or a torn write
      if (!ok) break;
      v->seen = true;
      count++;
      if (!first) first = h.time;
      last = h.time;
    }
    pos = next_pos(j, pos, &h, len);
  }
  unmap_read(j, from, pos);
  char vjson[8192];
  size_t vl = 0;
  vjson[vl++] = '{';
  for (uint32_t i = 0; w && i < nvols; i++) {
    if (!w[i].seen || vl + 48 > sizeof vjson) continue;
    vl += (size_t)snprintf(vjson + vl, sizeof vjson - vl, "%s\"%u\":%llu", vl > 1 ? "," : "", w[i].id,
                           (unsigned long long)w[i].last);
  }
  free(w);
  vjson[vl++] = '}';
  vjson[vl] = 0;
  if (has_ck && pos < ck.head) {
    char f[128];
    snprintf(f, sizeof f, "{\"expected\":%llu,\"found\":%llu}", (unsigned long long)ck.head, (unsigned long long)pos);
    jlog(j, LOG_ERROR, "journal records before the last checkpoint are unreadable", f);
  }
  j->head = j->written = j->durable = pos;
  pthread_mutex_init(&j->mu, NULL);
  pthread_cond_init(&j->space_cv, NULL);
  pthread_cond_init(&j->commit_cv, NULL);
  pthread_cond_init(&j->progress_cv, NULL);
  pthread_cond_init(&j->mirror_cv, NULL);
  pthread_cond_init(&j->sync_cv, NULL);
  json_t jj;
  json_begin(&jj, info, infocap);
  json_str(&jj, "ringId", j->ring_id);
  json_uint(&jj, "dataSize", j->data_size);
  json_uint(&jj, "tail", j->tail);
  json_uint(&jj, "head", j->head);
  json_uint(&jj, "mirrorPos", j->mirror_released);
  json_bool(&jj, "checkpoint", has_ck);
  char rec[8400];
  json_t rj;
  json_begin(&rj, rec, sizeof rec);
  json_uint(&rj, "records", count);
  json_uint(&rj, "from", from);
  json_uint(&rj, "to", pos);
  json_uint(&rj, "firstTime", first);
  json_uint(&rj, "lastTime", last);
  json_raw(&rj, "volumes", vjson);
  json_raw(&jj, "recovered", json_end(&rj));
  json_end(&jj);
  // the walk's findings are made durable in the checkpoint before anything is appended
  if (write_checkpoint(j, ++j->ck_gen, j->tail, j->head, j->mirror_released) < 0 || fdatasync(j->fd) < 0) {
    info_error(info, infocap, "journal buffer %s: cannot write its checkpoint (%s)", path, strerror(errno));
    discard(j);
    return NULL;
  }
  int tr = pthread_create(&j->committer, NULL, committer_main, j);
  if (tr != 0) {
    info_error(info, infocap, "journal buffer %s: cannot start its committer (%s)", path, strerror(tr));
    discard(j);
    return NULL;
  }
  return j;
}

// ---- volumes ----

EXPORT int32_t cn_journal_add_volume(cn_journal *j, uint32_t id, uint64_t size, uint64_t last_seq, int32_t image_fd) {
  if (id > (1u << 24)) return -EINVAL;
  pthread_mutex_lock(&j->mu);
  if (id >= j->nvols) {
    // the array of pointers grows (the volumes themselves never move), and with it the commit's
    // snapshot, which a commit in progress reads outside the lock
    while (j->committing) pthread_cond_wait(&j->commit_cv, &j->mu);
    jvol_t **nv = realloc(j->vols, sizeof(jvol_t *) * (id + 1));
    if (nv) j->vols = nv;
    uint32_t *ni = nv ? realloc(j->c_ids, sizeof(uint32_t) * (id + 1)) : NULL;
    if (ni) j->c_ids = ni;
    uint64_t *ns = ni ? realloc(j->c_seqs, sizeof(uint64_t) * (id + 1)) : NULL;
    if (ns) j->c_seqs = ns;
    if (!ns) {
      pthread_mutex_unlock(&j->mu);
      return -ENOMEM;
    }
    memset(nv + j->nvols, 0, sizeof(jvol_t *) * (id + 1 - j->nvols));
    j->nvols = id + 1;
  }
  jvol_t *v = j->vols[id];
  if (!v) {
    v = calloc(1, sizeof *v);
    if (v) v->fifo = calloc(HELD_CAP, sizeof(held_t));
    if (!v || !v->fifo) {
      if (v) free(v);
      pthread_mutex_unlock(&j->mu);
      return -ENOMEM;
    }
    v->last_seq = v->durable_seq = v->committing_seq = last_seq;
    j->vols[id] = v;
  }
  v->size = size;
  v->image_fd = image_fd;
  pthread_mutex_unlock(&j->mu);
  return 0;
}

EXPORT void cn_journal_set_bound(cn_journal *j, uint32_t id, uint64_t bound) {
  pthread_mutex_lock(&j->mu);
  jvol_t *v = vol(j, id);
  if (v) {
    v->bound = bound;
    pthread_cond_broadcast(&j->space_cv);
  }
  pthread_mutex_unlock(&j->mu);
}

bool journal_volume(cn_journal *j, uint32_t id, uint64_t *size, uint64_t *last_seq, uint64_t *durable_seq) {
  pthread_mutex_lock(&j->mu);
  jvol_t *v = vol(j, id);
  if (v) {
    *size = v->size;
    *last_seq = v->last_seq;
    *durable_seq = v->durable_seq;
  }
  pthread_mutex_unlock(&j->mu);
  return v != NULL;
}

void journal_on_durable(cn_journal *j, durable_fn fn, void *ctx) {
  pthread_mutex_lock(&j->mu);
  j->on_durable = fn;
  j->on_durable_ctx = ctx;
  pthread_mutex_unlock(&j->mu);
}

static void hold_bytes(jvol_t *v, uint64_t end, uint64_t bytes) {
  if (v->fifo_n == HELD_CAP) {
    // full: the newest entry absorbs this one (released a little later than exact)
    held_t *last = &v->fifo[(v->fifo_first + v->fifo_n - 1) % HELD_CAP];
    last->end = end;
    last->bytes += bytes;
  } else {
    v->fifo[(v->fifo_first + v->fifo_n) % HELD_CAP] = (held_t){end, bytes};
    v->fifo_n++;
  }
  v->held += bytes;
}

static void release_held(cn_journal *j) {
  for (uint32_t i = 0; i < j->nvols; i++) {
    jvol_t *v = j->vols[i];
    while (v && v->fifo_n > 0 && v->fifo[v->fifo_first].end <= j->tail) {
      v->held -= v->fifo[v->fifo_first].bytes;
      v->fifo_first = (v->fifo_first + 1) % HELD_CAP;
      v->fifo_n--;
    }
  }
}

// ---- the tail ----

static void advance_tail(cn_journal *j) {
  // until the mirror starts, the readers are not all known (a site's reader resumes from where
  // it stopped, the mirror from its checkpoint): nothing is released before
  if (!j->mirror_on) return;
  uint64_t min = j->durable > j->retain ? j->durable - j->retain : 0;
  min = MIN(min, j->mirror_released);
  for (int i = 0; i < MAX_CURSORS; i++) {
    if (j->cursors[i].used && j->cursors[i].required) min = MIN(min, j->cursors[i].released);
  }
  if (min <= j->tail) return;
  j->tail = min;
  release_held(j);
  // the committer writes the new tail within the commit delay; it needs waking only to learn the
  // state is dirty, or at once for an append waiting for the space
  if (!j->state_dirty || j->waiting > 0) pthread_cond_broadcast(&j->commit_cv);
  if (!j->state_dirty) j->dirty_since_ns = mono_ns();
  j->state_dirty = true;
  plane_flag(j->plane, CN_FL_JOURNAL);
}

// ---- appending ----

static bool fits(cn_journal *j, uint64_t at, uint64_t len) { return at + len - j->tail_durable <= j->data_size; }

/** Where a record of len bytes goes: at, and whether a Wrap filler of the lap's rest goes first. */
static uint64_t place(cn_journal *j, uint64_t pos, uint64_t len, bool *filler) {
  uint64_t in_lap = pos % j->data_size;
  *filler = false;
  if (in_lap + len <= j->data_size) return pos;
  *filler = j->data_size - in_lap >= REC_HEADER;
  return pos - in_lap + j->data_size;
}

static void signal_pressure(cn_journal *j) {
  int64_t now = mono_ns();
  if (now - j->last_pressure < 100000000) return;
  j->last_pressure = now;
  plane_flag(j->plane, CN_FL_PRESSURE);
}

/**
 * A paced reader is more behind than its allowance: what it takes in the lag bound at the rate
 * it acknowledges (the sender measures both), so a fast writer cannot put more in than that.
 */
static bool over_lag(cn_journal *j) {
  if (!j->paced) return false;
  for (int i = 0; i < MAX_CURSORS; i++) {
    const cursor_t *c = &j->cursors[i];
    if (c->used && c->pace && c->released < j->head && j->head - c->released > c->pace) return true;
  }
  return false;
}

typedef struct {
  uint64_t pos;
  uint32_t idx; // record index, or UINT32_MAX for a Wrap filler
} placed_t;

int journal_append(cn_journal *j, uint8_t *const *recs, const uint32_t *lens, const uint32_t *vols, const rec_t *h,
                   uint32_t n, uint64_t *positions, bool partial) {
  placed_t placed[256];
  uint8_t fillers[4][REC_HEADER];
  uint32_t done = 0;
  pthread_mutex_lock(&j->mu);
  for (uint32_t i = 0; i < n; i++) {
    if (!vol(j, vols[i])) {
      pthread_mutex_unlock(&j->mu);
      return -ENOENT;
    }
  }
  pthread_mutex_unlock(&j->mu);
  while (done < n) {
    pthread_mutex_lock(&j->mu);
    // room in the reservation list, then as many records as fit now (waiting for the first)
    while (j->res_n == RES_CAP && !j->failure && !j->closing) pthread_cond_wait(&j->space_cv, &j->mu);
    uint32_t np = 0, nf = 0, k = done;
    bool barrier = false;
    uint64_t start = j->head, pos = j->head;
    bool lagging = over_lag(j);
    while (k < n && np < 250 && nf < 4 && !j->failure && !j->closing) {
      bool filler;
      uint64_t at = place(j, pos, lens[k], &filler);
      jvol_t *v = vol(j, vols[k]); // checked above; volumes are never removed
      bool bounded = v->bound && v->held > 0 && v->held + lens[k] > v->bound;
      bool full = !fits(j, at, lens[k]) || bounded;
      if (full || lagging) {
        if (k > done) break; // what is placed goes first; the rest waits in the next round
        if (partial && done > 0) break; // the caller takes what is in and asks again
        j->waiting++;
        // a lag wait is no shortage of space: pulling a site ahead for it would defeat the bound
        if (full) {
          signal_pressure(j);
          j->space_wanted = true;
          pthread_cond_broadcast(&j->mirror_cv);
        }
        // a commit makes the released space usable (its tail durable)
        pthread_cond_broadcast(&j->commit_cv);
        struct timespec until = deadline_in(100);
        cond_wait_until(&j->space_cv, &j->mu, &until);
        j->waiting--;
        start = pos = j->head;
        lagging = over_lag(j);
        continue;
      }
      if (filler) {
        uint8_t *f = fillers[nf++];
        memset(f, 0, REC_HEADER);
        rec_t w = {.kind = K_WRAP, .length = (uint32_t)(at - pos), .pos = pos};
        rec_write_header(f, &w);
        placed[np++] = (placed_t){pos, UINT32_MAX - (nf - 1)};
      }
      rec_restamp(recs[k], vols[k], at);
      if (!rec_between(&h[k])) {
        v->last_seq = h[k].seq;
        v->changed = true;
      }
      hold_bytes(v, at + lens[k], lens[k]);
      if (h[k].kind == K_FLUSH || (h[k].flags & RF_FUA)) {
        j->barrier_at = at + lens[k];
        barrier = true;
      }
      if (!j->pending_first) j->pending_first = h[k].time;
      j->pending_last = h[k].time;
      j->pending_records++;
      if (positions) positions[k] = at;
      placed[np++] = (placed_t){at, k};
      pos = at + lens[k];
      k++;
    }
    if (k == done) { // nothing placed: a partial append returns what it did
      pthread_mutex_unlock(&j->mu);
      return (int)done;
    }
    if (j->failure || j->closing) {
      int e = j->failure ? -j->failure : -ESHUTDOWN;
      pthread_mutex_unlock(&j->mu);
      return e;
    }
    uint32_t slot = (j->res_first + j->res_n) % RES_CAP;
    j->res[slot] = (res_t){start, pos, false};
    j->res_n++;
    bool started = j->written == j->durable && !j->first_unsynced_ns;
    if (started) j->first_unsynced_ns = mono_ns();
    j->head = pos;
    pthread_mutex_unlock(&j->mu);
    // the records go to the ring with as few system calls as their positions allow
    int64_t r = 0;
    struct iovec iov[256];
    uint32_t ni = 0;
    uint64_t run_at = 0, run_end = 0;
    for (uint32_t i = 0; i <= np && r >= 0; i++) {
      bool flush = i == np;
      uint64_t at = 0, len = 0;
      const uint8_t *src = NULL;
      if (!flush) {
        at = placed[i].pos;
        if (placed[i].idx >= UINT32_MAX - 3) {
          src = fillers[UINT32_MAX - placed[i].idx];
          len = REC_HEADER;
        } else {
          src = recs[placed[i].idx];
          len = lens[placed[i].idx];
        }
        flush = ni > 0 && (at != run_end || ni == 256 || at % j->data_size == 0);
      }
      if (flush && ni > 0) {
        ssize_t w;
        uint64_t want = run_end - run_at, got = 0;
        struct iovec *v = iov;
        int cnt = (int)ni;
        while (got < want) {
          w = pwritev(j->fd, v, cnt, (off_t)(physical(j, run_at) + got));
          if (w < 0) {
            if (errno == EINTR) continue;
            r = -errno;
            break;
          }
          got += (uint64_t)w;
          while (cnt > 0 && (size_t)w >= v->iov_len) {
            w -= (ssize_t)v->iov_len;
            v++;
            cnt--;
          }
          if (cnt > 0 && w > 0) {
            v->iov_base = (uint8_t *)v->iov_base + w;
            v->iov_len -= (size_t)w;
          }
        }
        ni = 0;
      }
      if (i < np) {
        if (ni == 0) run_at = run_end = at;
        iov[ni++] = (struct iovec){(void *)src, len};
        run_end += len;
      }
    }
    pthread_mutex_lock(&j->mu);
    if (r < 0 && !j->failure) {
      j->failure = (int)-r;
      char f[128];
      snprintf(f, sizeof f, "{\"error\":\"%s\"}", strerror((int)-r));
      jlog(j, LOG_ERROR, "journal failed; refusing further records", f);
      plane_post(j->plane, CN_EV_FAILED, CN_SRC_JOURNAL, 0, strerror((int)-r), strlen(strerror((int)-r)), NULL, 0,
                 false);
      pthread_cond_broadcast(&j->space_cv);
      pthread_cond_broadcast(&j->progress_cv);
    }
    j->res[slot].done = true;
    // the written frontier moves over every completed reservation in order
    while (j->res_n > 0 && j->res[j->res_first].done) {
      j->written = j->res[j->res_first].end;
      j->times[j->times_n % TIMES_CAP].end = j->written;
      j->times[j->times_n % TIMES_CAP].t = j->last_written_ns = mono_ns();
      j->times_n++;
      j->res_first = (j->res_first + 1) % RES_CAP;
      j->res_n--;
    }
    pthread_cond_broadcast(&j->space_cv);
    // the committer sleeps until its next deadline: it is woken only when these records move
    // it (the first ones pending, a barrier, the size threshold) or a commit waits for them
    // (a wake per append was a thread switch per batch under a steady load)
    if (j->committing || started || barrier || j->head - j->durable >= j->commit_bytes || j->failure)
      pthread_cond_broadcast(&j->commit_cv);
    int fail = j->failure;
    pthread_mutex_unlock(&j->mu);
    if (fail) return -fail;
    done = k;
  }
  return (int)done;
}

EXPORT int64_t cn_journal_append(cn_journal *j, const uint8_t *buf, uint64_t len, const uint32_t *vol_ids,
                                 uint32_t count, uint64_t *positions) {
  uint8_t *recs[256];
  uint32_t lens[256];
  rec_t hs[256];
  uint64_t at = 0;
  uint32_t done = 0;
  while (done < count) {
    uint32_t n = 0;
    while (done + n < count && n < 256) {
      if (len - at < REC_HEADER) return done ? (int64_t)done : -EINVAL;
      rec_t *h = &hs[n];
      if (rec_decode(buf + at, REC_HEADER, MAX_PAYLOAD, h) != NULL) return done ? (int64_t)done : -EBADMSG;
      uint64_t rl = REC_HEADER + rec_payload_len(h->kind, h->length);
      if (rl > len - at || !rec_payload_ok(buf + at, rl, h) || h->kind == K_WRAP) return done ? (int64_t)done : -EBADMSG;
      // the caller's buffer is restamped in place (it is its own copy of the records)
      recs[n] = (uint8_t *)(uintptr_t)(buf + at);
      lens[n] = (uint32_t)rl;
      at += rl;
      n++;
    }
    int r = journal_append(j, recs, lens, vol_ids + done, hs, n, positions ? positions + done : NULL, true);
    if (r < 0) return done ? (int64_t)done : r;
    done += (uint32_t)r;
    // some are in and the next one would wait: the caller takes these and asks again
    if ((uint32_t)r < n) break;
  }
  return done;
}

// ---- group commit ----

/**
 * One group commit of everything reserved so far: the ring's checkpoint and one fdatasync,
 * then the durable positions and acknowledgements. j->mu is held on entry and on return (it
 * is let go for the I/O); the caller checked that no other commit runs.
 */
static void commit_locked(cn_journal *j) {
  j->committing = true;
  // a snapshot: everything reserved so far, and each volume's sequence at that point
  uint64_t target = j->head, tail = j->tail, mirror = j->mirror_released;
  uint32_t *ids = j->c_ids;
  uint64_t *seqs = j->c_seqs;
  uint32_t n = 0;
  for (uint32_t i = 0; i < j->nvols; i++) {
    jvol_t *v = j->vols[i];
    if (v && v->changed) {
      v->changed = false;
      v->committing_seq = v->last_seq;
      ids[n] = i;
      seqs[n++] = v->last_seq;
    }
  }
  uint64_t records = j->pending_records, first = j->pending_first, last = j->pending_last;
  j->pending_records = j->pending_first = j->pending_last = 0;
  j->state_dirty = false;
  j->first_unsynced_ns = 0;
  // the reservations below the target finish their writes first (page cache: quickly)
  while (j->written < target && !j->failure) pthread_cond_wait(&j->commit_cv, &j->mu);
  if (j->failure) {
    j->committing = false;
    pthread_cond_broadcast(&j->commit_cv);
    return;
  }
  uint64_t gen = ++j->ck_gen;
  pthread_mutex_unlock(&j->mu);
  int r = write_checkpoint(j, gen, tail, target, mirror);
  if (r == 0 && fdatasync(j->fd) < 0) r = -errno;
  pthread_mutex_lock(&j->mu);
  if (r < 0) {
    j->failure = -r;
    char f[128];
    snprintf(f, sizeof f, "{\"error\":\"%s\"}", strerror(-r));
    jlog(j, LOG_ERROR, "journal failed; refusing further records", f);
    plane_post(j->plane, CN_EV_FAILED, CN_SRC_JOURNAL, 0, strerror(-r), strlen(strerror(-r)), NULL, 0, false);
    pthread_cond_broadcast(&j->space_cv);
    pthread_cond_broadcast(&j->progress_cv);
    j->committing = false;
    pthread_cond_broadcast(&j->commit_cv);
    return;
  }
  if (target > j->durable) j->durable = target;
  if (tail > j->tail_durable) j->tail_durable = tail;
  for (uint32_t i = 0; i < n; i++) j->vols[ids[i]]->durable_seq = seqs[i];
  j->records_total += records;
  if (records) {
    if (!j->since_first) j->since_first = first;
    j->since_last = last;
  }
  j->commits++;
  if (j->head > j->durable && !j->first_unsynced_ns) j->first_unsynced_ns = mono_ns();
  advance_tail(j); // durable - retain may free more
  pthread_cond_broadcast(&j->progress_cv);
  pthread_cond_broadcast(&j->space_cv);
  pthread_cond_broadcast(&j->mirror_cv);
  durable_fn fn = j->on_durable;
  void *ctx = j->on_durable_ctx;
  pthread_mutex_unlock(&j->mu);
  // the agents' acknowledgements first: they are what a FLUSH waits for
  if (fn && n) fn(ctx, ids, seqs, n);
  plane_flag(j->plane, CN_FL_JOURNAL);
  pthread_mutex_lock(&j->mu);
  j->committing = false;
  pthread_cond_broadcast(&j->commit_cv);
}

static void *committer_main(void *arg) {
  thread_name("cn-commit");
  cn_journal *j = arg;
  pthread_mutex_lock(&j->mu);
  for (;;) {
    if (j->committing) { // an appender commits inline
      pthread_cond_wait(&j->commit_cv, &j->mu);
      continue;
    }
    int64_t now = mono_ns();
    bool pending = j->head > j->durable;
    bool barrier = j->barrier_at > j->durable;
    // a pause in the appends: nobody gains by waiting longer, and a lone record's commit (which
    // its replication waits for) would otherwise wait the whole delay
    bool idle = j->commit_idle_ns >= 0 && j->written == j->head && now - j->last_written_ns >= j->commit_idle_ns;
    bool due = pending && (barrier || idle || j->head - j->durable >= j->commit_bytes ||
                           now - j->first_unsynced_ns >= j->commit_delay_ns || j->closing);
    bool state = j->state_dirty && (now - j->dirty_since_ns >= j->commit_delay_ns || j->waiting > 0 || j->closing);
    if (j->failure || (!due && !state)) {
      if (j->closing && !pending && !j->state_dirty) break;
      if (j->failure && j->closing) break;
      int64_t wait_ns = 1000000000;
      if (pending) wait_ns = MAX(1000000, j->first_unsynced_ns + j->commit_delay_ns - now);
      if (pending && j->commit_idle_ns >= 0)
        wait_ns = MIN(wait_ns, MAX(1000000, j->last_written_ns + j->commit_idle_ns - now));
      if (j->state_dirty) wait_ns = MIN(wait_ns, MAX(1000000, j->dirty_since_ns + j->commit_delay_ns - now));
      struct timespec until = deadline_in(wait_ns / 1000000);
      cond_wait_until(&j->commit_cv, &j->mu, &until);
      continue;
    }
    commit_locked(j);
  }
  pthread_mutex_unlock(&j->mu);
  return NULL;
}

bool journal_commit_inline(cn_journal *j) {
  pthread_mutex_lock(&j->mu);
  bool take = !j->committing && !j->failure && !j->closing && j->barrier_at > j->durable;
  if (take) commit_locked(j);
  pthread_mutex_unlock(&j->mu);
  return take;
}

EXPORT int32_t cn_journal_flush(cn_journal *j) {
  pthread_mutex_lock(&j->mu);
  uint64_t target = j->head;
  if (target > j->barrier_at) j->barrier_at = target;
  pthread_cond_broadcast(&j->commit_cv);
  while (j->durable < target && !j->failure) pthread_cond_wait(&j->progress_cv, &j->mu);
  int r = j->failure ? -j->failure : 0;
  pthread_mutex_unlock(&j->mu);
  return r;
}

// ---- readers ----

EXPORT int32_t cn_journal_cursor(cn_journal *j, uint64_t pos, int32_t required) {
  pthread_mutex_lock(&j->mu);
  int id = -ENOSPC;
  for (int i = 0; i < MAX_CURSORS; i++) {
    if (!j->cursors[i].used) {
      // never past the head: a position the ring no longer holds (records lost before a checkpoint) reads on from it
      j->cursors[i] = (cursor_t){true, required != 0, MIN(MAX(pos, j->tail), j->head), 0};
      id = i;
      break;
    }
  }
  pthread_mutex_unlock(&j->mu);
  return id;
}

EXPORT void cn_journal_cursor_release(cn_journal *j, int32_t id, uint64_t pos) {
  if (id < 0 || id >= MAX_CURSORS) return;
  pthread_mutex_lock(&j->mu);
  cursor_t *c = &j->cursors[id];
  if (c->used && pos > c->released) {
    c->released = pos;
    advance_tail(j);
    if (c->pace && j->waiting) pthread_cond_broadcast(&j->space_cv);
  }
  pthread_mutex_unlock(&j->mu);
}

EXPORT void cn_journal_cursor_pace(cn_journal *j, int32_t id, uint64_t bytes) {
  if (id < 0 || id >= MAX_CURSORS) return;
  pthread_mutex_lock(&j->mu);
  cursor_t *c = &j->cursors[id];
  if (c->used) {
    j->paced += (bytes != 0) - (c->pace != 0);
    c->pace = bytes;
    pthread_cond_broadcast(&j->space_cv);
  }
  pthread_mutex_unlock(&j->mu);
}

EXPORT void cn_journal_cursor_required(cn_journal *j, int32_t id, int32_t required) {
  if (id < 0 || id >= MAX_CURSORS) return;
  pthread_mutex_lock(&j->mu);
  if (j->cursors[id].used) {
    j->cursors[id].required = required != 0;
    advance_tail(j);
  }
  pthread_mutex_unlock(&j->mu);
}

EXPORT void cn_journal_cursor_drop(cn_journal *j, int32_t id) {
  if (id < 0 || id >= MAX_CURSORS) return;
  pthread_mutex_lock(&j->mu);
  if (j->cursors[id].used && j->cursors[id].pace) j->paced--;
  j->cursors[id].used = false;
  j->cursors[id].pace = 0;
  advance_tail(j);
  pthread_cond_broadcast(&j->space_cv);
  pthread_mutex_unlock(&j->mu);
}

static int64_t entered_at(cn_journal *j, uint64_t pos) {
  // the first append whose reservation ended past pos
  uint64_t oldest = j->times_n > TIMES_CAP ? j->times_n - TIMES_CAP : 0, lo = oldest, hi = j->times_n;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (j->times[mid % TIMES_CAP].end <= pos) lo = mid + 1;
    else hi = mid;
  }
  // not remembered (older than the oldest append kept, or from before this start): unknown
  if (lo == j->times_n || (lo == oldest && oldest > 0)) return 0;
  return j->times[lo % TIMES_CAP].t;
}

EXPORT int64_t cn_journal_entered(cn_journal *j, uint64_t pos) {
  pthread_mutex_lock(&j->mu);
  int64_t t = pos < j->written ? entered_at(j, pos) : 0;
  pthread_mutex_unlock(&j->mu);
  return t;
}

EXPORT int64_t cn_journal_read(cn_journal *j, uint64_t pos, uint64_t max_bytes, uint8_t *out, uint64_t cap,
                               int32_t flags) {
  pthread_mutex_lock(&j->mu);
  uint64_t durable = j->durable;
  bool closed = j->closing;
  pthread_mutex_unlock(&j->mu);
  if (closed) return -EBADF;
  bool heads = (flags & CN_READ_HEADS) != 0;
  // an optional reader the tail passed may still find its records, until they are overwritten:
  // each is copied first, then verified in the copy (its position, its checksums). Copied with
  // pread, not from the mapping: faulting the pages in and giving them back after (unmap_read)
  // cost each reader more than the copy, and every site's sender reads every record. Headers
  // only: their payloads are read and verified where they are sent (journal_copy_record).
  uint64_t n = 0, bytes = 0;
  while (pos < durable && bytes < max_bytes) {
    if (n + 28 + REC_HEADER > cap) break;
    uint8_t *dst = out + n + 28;
    rec_t h;
    uint64_t len = header_at(j, pos, dst, &h);
    if (len == 0) {
      if (n == 0) return -EIO;
      break;
    }
    if (h.kind != K_WRAP && !heads) {
      if (n + 28 + len > cap) break;
      if (io_pread(j->fd, dst + REC_HEADER, len - REC_HEADER, physical(j, pos) + REC_HEADER) !=
              (int64_t)(len - REC_HEADER) ||
          !rec_payload_ok(dst, len, &h)) {
        if (n == 0) return -EIO;
        break;
      }
    }
    uint64_t end = next_pos(j, pos, &h, len);
    uint64_t copy = h.kind == K_WRAP ? 0 : heads ? REC_HEADER : len; // room checked above
    put64(out + n, pos);
    put64(out + n + 8, end);
    pthread_mutex_lock(&j->mu);
    int64_t t = entered_at(j, pos);
    pthread_mutex_unlock(&j->mu);
    put64(out + n + 16, (uint64_t)t);
    put32(out + n + 24, (uint32_t)(h.kind == K_WRAP ? 0 : len));
    n += 28 + copy;
    bytes += h.kind == K_WRAP ? 0 : len;
    pos = end;
  }
  if (n == 0 && pos < durable) return -ENOBUFS;
  return (int64_t)n;
}

int64_t journal_copy_record(cn_journal *j, uint64_t pos, uint64_t len, uint8_t *out) {
  uint64_t in_lap = pos % j->data_size;
  if (len < REC_HEADER || len > REC_HEADER + MAX_PAYLOAD || in_lap + len > j->data_size) return -EINVAL;
  if (io_pread(j->fd, out, len, physical(j, pos)) != (int64_t)len) return -EIO;
  // verified in the copy, as cn_journal_read does: an optional reader's record may have been
  // overwritten since its header was read
  rec_t h;
  if (!header_is(out, pos, &h) || h.kind == K_WRAP ||
      REC_HEADER + rec_payload_len(h.kind, h.length) != len || !rec_payload_ok(out, len, &h)) {
    return -ESTALE;
  }
  return (int64_t)len;
}

EXPORT void cn_journal_status(cn_journal *j, uint64_t *out) {
  pthread_mutex_lock(&j->mu);
  out[0] = j->tail;
  out[1] = j->durable;
  out[2] = j->head;
  out[3] = j->data_size;
  out[4] = j->mirror_applied;
  out[5] = j->mirror_released;
  out[6] = (uint64_t)j->failure;
  out[7] = j->records_total;
  out[8] = j->waiting;
  out[9] = j->commits;
  pthread_mutex_unlock(&j->mu);
}

EXPORT uint32_t cn_journal_take_index(cn_journal *j, uint64_t *out, uint64_t *seqs, uint32_t cap) {
  // one lock: a commit between reading the position and the sequences would make the index
  // name sequences its head does not hold, and a restart's walk from that head stop short
  pthread_mutex_lock(&j->mu);
  out[0] = j->durable;
  out[1] = j->records_total - j->indexed_records;
  out[2] = j->since_first;
  out[3] = j->since_last;
  out[4] = j->tail;
  out[5] = j->mirror_applied;
  j->indexed_records = j->records_total;
  j->since_first = j->since_last = 0;
  uint32_t n = MIN(cap, j->nvols);
  for (uint32_t i = 0; i < n; i++) seqs[i] = j->vols[i] ? j->vols[i]->durable_seq : UINT64_MAX;
  pthread_mutex_unlock(&j->mu);
  return n;
}

EXPORT int32_t cn_journal_volume_status(cn_journal *j, uint32_t id, uint64_t *out) {
  pthread_mutex_lock(&j->mu);
  jvol_t *v = vol(j, id);
  if (v) {
    out[0] = v->last_seq;
    out[1] = v->durable_seq;
    out[2] = v->held;
    out[3] = v->mirror_seq;
    out[4] = v->mirror_time;
    out[5] = v->bound;
  }
  pthread_mutex_unlock(&j->mu);
  return v ? 0 : -ENOENT;
}

// ---- the mirror applier: durable records onto the volumes' images, in journal order ----

static void *syncer_main(void *arg) {
  thread_name("cn-mirror-sync");
  cn_journal *j = arg;
  pthread_mutex_lock(&j->mu);
  for (;;) {
    while (!j->sync_has_job && !j->mirror_stop) pthread_cond_wait(&j->sync_cv, &j->mu);
    if (!j->sync_has_job) break;
    uint32_t nf = j->sync_nfds, nm = j->sync_nmarkers;
    uint64_t end = j->sync_end;
    pthread_mutex_unlock(&j->mu);
    int r = 0;
    for (uint32_t i = 0; i < nf && r == 0; i++) {
      if (fdatasync(j->sync_fds[i]) < 0) r = -errno;
    }
    pthread_mutex_lock(&j->mu);
    if (r < 0) {
      char f[128];
      snprintf(f, sizeof f, "{\"error\":\"%s\"}", strerror(-r));
      jlog(j, LOG_ERROR, "mirror applier failed", f);
      plane_post(j->plane, CN_EV_FAILED, CN_SRC_MIRROR, 0, strerror(-r), strlen(strerror(-r)), NULL, 0, false);
      j->mirror_stop = true;
    } else {
      if (end > j->mirror_released) j->mirror_released = end;
      advance_tail(j);
      plane_flag(j->plane, CN_FL_JOURNAL);
      // markers are reported once the image holding them is synced (the queue may make this wait:
      // never with the lock held, which TypeScript's status calls need)
      marker_t m[256];
      memcpy(m, j->sync_markers, nm * sizeof(marker_t));
      pthread_mutex_unlock(&j->mu);
      for (uint32_t i = 0; i < nm; i++) plane_post(j->plane, CN_EV_MARKER, m[i].vol, m[i].kind, NULL, 0, NULL, 0, true);
      pthread_mutex_lock(&j->mu);
    }
    j->sync_has_job = false;
    j->sync_busy = false;
    pthread_cond_broadcast(&j->mirror_cv);
  }
  pthread_mutex_unlock(&j->mu);
  return NULL;
}

static bool add_fd(int *fds, uint32_t *n, uint32_t cap, int fd) {
  for (uint32_t i = 0; i < *n; i++) {
    if (fds[i] == fd) return true;
  }
  if (*n == cap) return false;
  fds[(*n)++] = fd;
  return true;
}

/**
 * Applies the record at pos to its image. A write's payload goes from the ring through the
 * applier's buffer, a piece at a time: pwrite straight from the ring's mapping faulted its pages
 * in and had to give them back after, three times the CPU of the two copies.
 */
static int64_t apply_record(cn_journal *j, int fd, const rec_t *h, uint64_t pos) {
  if (h->kind != K_WRITE) return io_apply_record(fd, NULL, h);
  uint64_t src = physical(j, pos) + REC_HEADER;
  for (uint64_t done = 0; done < h->length;) {
    uint64_t n = MIN(MIRROR_PIECE, h->length - done);
    int64_t r = io_pread(j->fd, j->mirror_buf, n, src + done);
    if (r >= 0 && (uint64_t)r != n) r = -EIO;
    if (r >= 0) r = io_pwrite(fd, j->mirror_buf, n, h->offset + done);
    if (r < 0) return r;
    done += n;
  }
  return 0;
}

/** Applies a record to its image; a full disk is waited out (the journal keeps the records meanwhile). */
static int apply_retrying(cn_journal *j, int fd, const rec_t *h, uint64_t pos) {
  bool warned = false;
  for (int64_t wait_ms = 50;; wait_ms = MIN(wait_ms * 2, 1000)) {
    int64_t r = apply_record(j, fd, h, pos);
    if (r >= 0) return 0;
    if ((r != -ENOSPC && r != -EDQUOT) || j->mirror_stop) return (int)r;
    if (!warned) {
      char f[128];
      snprintf(f, sizeof f, "{\"volume\":%u,\"error\":\"%s\"}", h->volume, strerror((int)-r));
      jlog(j, LOG_WARN, "image disk full: waiting for space", f);
      warned = true;
    }
    usleep((useconds_t)(wait_ms * 1000));
  }
}

static void *mirror_main(void *arg) {
  thread_name("cn-mirror");
  cn_journal *j = arg;
  int fds[256], sync_fds[256];
  uint32_t nfds = 0;
  marker_t markers[256];
  uint32_t nmarkers = 0;
  uint64_t unsynced = 0;
  int64_t first_unsynced = 0, last_record = 0;
  pthread_mutex_lock(&j->mu);
  for (;;) {
    if (j->mirror_stop) break;
    int64_t now = mono_ns();
    bool work = !j->hold && j->mirror_applied < j->durable;
    bool due = (unsynced >= j->sync_bytes) || (unsynced > 0 && now - first_unsynced >= j->sync_interval_ns) ||
               (unsynced > 0 && j->idle_sync_ns >= 0 && !work && now - last_record >= j->idle_sync_ns) ||
               (unsynced == 0 && !work && j->mirror_applied > j->mirror_released && !j->sync_busy) ||
               (j->space_wanted && (unsynced > 0 || j->mirror_applied > j->mirror_released));
    if (due && !j->sync_busy && (nfds > 0 || nmarkers > 0 || j->mirror_applied > j->mirror_released)) {
      // one sync at a time, in order; it runs while the next batch is applied
      memcpy(sync_fds, fds, nfds * sizeof(int));
      j->sync_fds = sync_fds;
      j->sync_nfds = nfds;
      memcpy(j->sync_markers, markers, nmarkers * sizeof(marker_t));
      j->sync_nmarkers = nmarkers;
      j->sync_end = j->mirror_applied;
      j->sync_has_job = j->sync_busy = true;
      j->space_wanted = false;
      pthread_cond_signal(&j->sync_cv);
      nfds = nmarkers = 0;
      unsynced = 0;
      first_unsynced = 0;
      continue;
    }
    if (!work || (due && j->sync_busy && unsynced >= 4 * j->sync_bytes)) {
      int64_t wait_ns = 1000000000;
      if (unsynced > 0) {
        wait_ns = MAX(1000000, first_unsynced + j->sync_interval_ns - now);
        if (j->idle_sync_ns >= 0) wait_ns = MIN(wait_ns, MAX(1000000, last_record + j->idle_sync_ns - now));
      }
      if (j->mirror_applied > j->mirror_released) wait_ns = MIN(wait_ns, 1000000);
      struct timespec until = deadline_in(MAX(1, wait_ns / 1000000));
      cond_wait_until(&j->mirror_cv, &j->mu, &until);
      continue;
    }
    // a batch: from here to its end nothing else moves the images (a hold waits for it)
    uint64_t pos = j->mirror_applied, durable = j->durable, bytes = 0;
    j->in_batch = true;
    pthread_mutex_unlock(&j->mu);
    int err = 0;
    while (pos < durable && bytes < MIRROR_BATCH && !err) {
      rec_t h;
      uint64_t len = record_at(j, pos, &h, false);
      if (len == 0) {
        err = -EIO;
        break;
      }
      if (h.kind != K_WRAP) {
        pthread_mutex_lock(&j->mu);
        jvol_t *v = vol(j, h.volume);
        int fd = v ? v->image_fd : -1;
        if (v && !rec_between(&h)) {
          v->mirror_seq = h.seq;
          v->mirror_time = h.time;
        }
        pthread_mutex_unlock(&j->mu);
        if (h.kind == K_SYNC_BEGIN || h.kind == K_SYNC_END) {
          if (nmarkers < 256) markers[nmarkers++] = (marker_t){h.volume, h.kind};
        }
        if (fd >= 0 && (h.kind == K_WRITE || h.kind == K_TRIM || h.kind == K_ZERO)) {
          err = apply_retrying(j, fd, &h, pos);
          if (!add_fd(fds, &nfds, 256, fd)) err = -EMFILE;
          unsynced += len;
          bytes += len;
          if (!first_unsynced) first_unsynced = mono_ns();
        }
      }
      pos = next_pos(j, pos, &h, len);
    }
    last_record = mono_ns();
    pthread_mutex_lock(&j->mu);
    j->in_batch = false;
    pthread_cond_broadcast(&j->mirror_cv);
    if (err) {
      char f[128];
      snprintf(f, sizeof f, "{\"error\":\"%s\",\"pos\":%llu}", strerror(-err), (unsigned long long)pos);
      jlog(j, LOG_ERROR, "mirror applier failed", f);
      plane_post(j->plane, CN_EV_FAILED, CN_SRC_MIRROR, 0, strerror(-err), strlen(strerror(-err)), NULL, 0, false);
      break;
    }
    j->mirror_applied = pos;
    plane_flag(j->plane, CN_FL_JOURNAL);
  }
  j->in_batch = false;
  pthread_cond_broadcast(&j->mirror_cv);
  pthread_mutex_unlock(&j->mu);
  return NULL;
}

EXPORT int32_t cn_journal_mirror_start(cn_journal *j, uint64_t sync_bytes, int32_t sync_interval_ms,
                                       int32_t idle_sync_ms) {
  pthread_mutex_lock(&j->mu);
  if (j->mirror_on) {
    pthread_mutex_unlock(&j->mu);
    return -EALREADY;
  }
  j->sync_markers = calloc(256, sizeof(marker_t));
  j->mirror_buf = malloc(MIRROR_PIECE);
  if (!j->sync_markers || !j->mirror_buf) {
    free(j->sync_markers);
    free(j->mirror_buf);
    j->sync_markers = NULL;
    j->mirror_buf = NULL;
    pthread_mutex_unlock(&j->mu);
    return -ENOMEM;
  }
  j->mirror_on = true;
  j->sync_bytes = sync_bytes ? sync_bytes : 64u << 20;
  j->sync_interval_ns = (int64_t)(sync_interval_ms > 0 ? sync_interval_ms : 1000) * 1000000;
  j->idle_sync_ns = idle_sync_ms >= 0 ? (int64_t)idle_sync_ms * 1000000 : -1;
  if (j->mirror_applied < j->tail) j->mirror_applied = j->mirror_released = j->tail;
  pthread_mutex_unlock(&j->mu);
  int r = pthread_create(&j->syncer_thr, NULL, syncer_main, j);
  if (r == 0 && (r = pthread_create(&j->mirror_thr, NULL, mirror_main, j)) != 0) {
    pthread_mutex_lock(&j->mu);
    j->mirror_stop = true;
    pthread_cond_broadcast(&j->sync_cv);
    pthread_mutex_unlock(&j->mu);
    pthread_join(j->syncer_thr, NULL);
  }
  if (r != 0) {
    pthread_mutex_lock(&j->mu);
    j->mirror_on = false;
    j->mirror_stop = false;
    free(j->sync_markers);
    free(j->mirror_buf);
    j->sync_markers = NULL;
    j->mirror_buf = NULL;
    pthread_mutex_unlock(&j->mu);
    return -r;
  }
  return 0;
}

EXPORT int32_t cn_journal_mirror_hold(cn_journal *j) {
  pthread_mutex_lock(&j->mu);
  j->hold = true;
  while (j->in_batch) pthread_cond_wait(&j->mirror_cv, &j->mu);
  pthread_mutex_unlock(&j->mu);
  return 0;
}

EXPORT void cn_journal_mirror_release(cn_journal *j) {
  pthread_mutex_lock(&j->mu);
  j->hold = false;
  pthread_cond_broadcast(&j->mirror_cv);
  pthread_mutex_unlock(&j->mu);
}

EXPORT void cn_journal_mirror_stop(cn_journal *j) {
  pthread_mutex_lock(&j->mu);
  if (!j->mirror_on || j->mirror_joined) {
    pthread_mutex_unlock(&j->mu);
    return;
  }
  // what is durable is applied first, so the images are current at the next start
  j->hold = false;
  struct timespec until = deadline_in(10000);
  while (!j->mirror_stop && j->mirror_applied < j->durable && cond_wait_until(&j->mirror_cv, &j->mu, &until)) {
  }
  while (j->sync_busy && cond_wait_until(&j->mirror_cv, &j->mu, &until)) {
  }
  j->mirror_stop = true;
  j->mirror_joined = true;
  pthread_cond_broadcast(&j->mirror_cv);
  pthread_cond_broadcast(&j->sync_cv);
  pthread_mutex_unlock(&j->mu);
  pthread_join(j->mirror_thr, NULL);
  pthread_join(j->syncer_thr, NULL);
  // the images hold everything applied: synced now, and the next checkpoint records it
  pthread_mutex_lock(&j->mu);
  bool ok = true;
  for (uint32_t i = 0; i < j->nvols; i++) {
    if (j->vols[i] && j->vols[i]->image_fd >= 0 && fdatasync(j->vols[i]->image_fd) < 0) ok = false;
  }
  if (ok) j->mirror_released = j->mirror_applied;
  advance_tail(j);
  pthread_mutex_unlock(&j->mu);
}

EXPORT void cn_journal_close(cn_journal *j) {
  if (!j || j->fd < 0) return;
  cn_journal_mirror_stop(j);
  pthread_mutex_lock(&j->mu);
  j->closing = true;
  j->state_dirty = true;
  pthread_cond_broadcast(&j->commit_cv);
  pthread_cond_broadcast(&j->space_cv);
  pthread_mutex_unlock(&j->mu);
  pthread_join(j->committer, NULL);
  munmap((void *)j->map, j->map_len);
  close(j->fd);
  j->fd = -1;
}

EXPORT void cn_journal_free(cn_journal *j) {
  if (!j) return;
  cn_journal_close(j);
  for (uint32_t i = 0; i < j->nvols; i++) {
    if (j->vols[i]) free(j->vols[i]->fifo);
    free(j->vols[i]);
  }
  free(j->vols);
  free(j->c_ids);
  free(j->c_seqs);
  free(j->times);
  free(j->sync_markers);
  free(j->mirror_buf);
  pthread_mutex_destroy(&j->mu);
  free(j);
}
