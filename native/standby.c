// A standby server's copies (the paper's RSP) kept by the data plane: the agent's link thread
// hands every record frame its site's gateway sends to standby_take, which verifies it, admits
// it by the replica rule (src/record/sequence.ts) and writes it to its copy at once, in stream
// order; a syncer thread makes what was written durable (one fdatasync a copy for everything
// written since its last), then saves each copy's position in its slot file (the format of
// src/io/slot-file.ts), then acknowledges by count on the link the records came on. So no record
// crosses into TypeScript, which registers the copies, answers hash requests and freezes the
// copies for a promotion.
//
// The position on disk never runs ahead of the data: it is saved after the fdatasync of the
// data it describes. A SyncBegin waits until "inconsistent" is on disk before any chunk of the
// synchronisation is written.
#include "capture.h"

#include <fcntl.h>
#include <unistd.h>

#define SB_VOLS 256
#define SLOT 512
#define SLOT_MAGIC 0x50534e43u /* "CNSP" */
#define SLOT_HEAD 16
#define SLOT_SUM (SLOT - 16)

typedef struct {
  char name[128];
  uint32_t journal_id;
  int fd;      // the copy (TypeScript's descriptor)
  int slot_fd; // its position file, opened here
  uint64_t size;
  uint64_t last_seq; // written (or skipped as held)
  bool rebase;       // after a SyncBegin, until the next captured write
  int state;
  uint64_t durable_seq; // saved with the data it describes
  int durable_state;
  uint64_t slot_gen;
  bool dirty; // written since its last fdatasync
} svol_t;

typedef struct {
  svol_t *v;
  bool dirty;
  uint64_t seq;
  int state;
  bool saved; // its slot file now says seq and state
} snap_t;

struct standby {
  cn_agent *a;
  pthread_mutex_t mu;
  pthread_cond_t work; // the syncer: records to make durable, or stop
  pthread_cond_t done; // a sync round ended, or the link thread left standby_take
  svol_t *vols[SB_VOLS];
  uint32_t n;
  bool enabled; // a standby: record frames are the copies' (cn_agent_standby_thaw)
  bool frozen, stop, started, busy, taking;
  char failed[300]; // what stopped the applying (cleared by the next link)
  uint64_t taken, synced; // records taken since the agent started; of them, durable
  uint64_t link, base;    // the link of the last record; `taken` before its first
  uint64_t acked;         // the last count acknowledged on that link
  pthread_t thr;
  snap_t snap[SB_VOLS]; // the syncer's: what a round makes durable
};

static const char *const STATES[] = {"empty", "consistent", "inconsistent"};

static void le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/** The newest intact slot's generation (0 when neither is). */
static uint64_t slot_generation(int fd) {
  uint8_t b[2 * SLOT], sum[16];
  ssize_t got = pread(fd, b, sizeof b, 0);
  uint64_t best = 0;
  for (int i = 0; i < 2; i++) {
    const uint8_t *s = b + i * SLOT;
    if (got < (ssize_t)((i + 1) * SLOT) || get_le(s, 4) != SLOT_MAGIC || get_le(s + 4, 4) > SLOT_SUM - SLOT_HEAD) {
      continue;
    }
    hash128(s, SLOT_SUM, sum);
    if (memcmp(sum, s + SLOT_SUM, 16) == 0) best = MAX(best, get_le(s + 8, 8));
  }
  return best;
}

/** Saves a position durably into the slot the newest value is not in; 0 or -errno. */
static int slot_save(svol_t *v, uint64_t seq, int state) {
  uint8_t s[SLOT] = {0};
  int n = snprintf((char *)s + SLOT_HEAD, SLOT_SUM - SLOT_HEAD, "{\"lastSeq\":%llu,\"state\":\"%s\"}",
                   (unsigned long long)seq, STATES[state]);
  uint64_t gen = v->slot_gen + 1;
  le32(s, SLOT_MAGIC);
  le32(s + 4, (uint32_t)n);
  le64(s + 8, gen);
  hash128(s, SLOT_SUM, s + SLOT_SUM);
  int64_t r = io_pwrite(v->slot_fd, s, SLOT, (gen % 2) * SLOT);
  if (r >= 0 && fdatasync(v->slot_fd) < 0) r = -errno;
  if (r < 0) return (int)r;
  v->slot_gen = gen;
  return 0;
}

struct standby *standby_new(cn_agent *a) {
  struct standby *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->a = a;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->work, NULL);
  pthread_cond_init(&s->done, NULL);
  return s;
}

static void release_vols(struct standby *s) {
  for (uint32_t i = 0; i < s->n; i++) {
    close(s->vols[i]->slot_fd);
    free(s->vols[i]);
  }
  s->n = 0;
}

void standby_free(struct standby *s) {
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  s->stop = true;
  pthread_cond_broadcast(&s->work);
  bool started = s->started;
  pthread_mutex_unlock(&s->mu);
  if (started) pthread_join(s->thr, NULL);
  release_vols(s);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->work);
  pthread_cond_destroy(&s->done);
  free(s);
}

static void log_failure(struct standby *s) {
  char f[400];
  json_t j;
  json_begin(&j, f, sizeof f);
  json_str(&j, "error", s->failed);
  plane_log(s->a->plane, LOG_ERROR, "standby", "standby volume write failed", json_end(&j));
}

static void *sync_main(void *arg) {
  thread_name("cn-standby-sync");
  struct standby *s = arg;
  snap_t *sn = s->snap;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->stop && (s->synced == s->taken || s->failed[0])) pthread_cond_wait(&s->work, &s->mu);
    if (s->stop) break;
    uint64_t target = s->taken, link = s->link, count = s->taken - s->base;
    uint32_t n = s->n;
    for (uint32_t i = 0; i < n; i++) {
      svol_t *v = s->vols[i];
      sn[i] = (snap_t){v, v->dirty, v->last_seq, v->state, false};
      v->dirty = false;
    }
    s->busy = true;
    pthread_mutex_unlock(&s->mu);
    char err[300] = "";
    for (uint32_t i = 0; i < n && !err[0]; i++) {
      if (sn[i].dirty && fdatasync(sn[i].v->fd) < 0) {
        snprintf(err, sizeof err, "standby copy %s: fdatasync: %s", sn[i].v->name, strerror(errno));
      }
    }
    for (uint32_t i = 0; i < n && !err[0]; i++) {
      svol_t *v = sn[i].v;
      if (sn[i].seq == v->durable_seq && sn[i].state == v->durable_state) continue;
      int r = slot_save(v, sn[i].seq, sn[i].state);
      if (r < 0) snprintf(err, sizeof err, "standby copy %s: saving its position: %s", v->name, strerror(-r));
      else sn[i].saved = true;
    }
    pthread_mutex_lock(&s->mu);
    s->busy = false;
    for (uint32_t i = 0; i < n; i++) {
      if (sn[i].saved) {
        sn[i].v->durable_seq = sn[i].seq;
        sn[i].v->durable_state = sn[i].state;
      }
      if (err[0] && sn[i].dirty) sn[i].v->dirty = true; // synced again once a new link clears the failure
    }
    if (err[0]) {
      snprintf(s->failed, sizeof s->failed, "%s", err);
      log_failure(s);
    } else {
      s->synced = target;
    }
    pthread_cond_broadcast(&s->done);
    if (!err[0] && link == s->link && count > s->acked) {
      s->acked = count;
      pthread_mutex_unlock(&s->mu);
      uint8_t f[FRAME_HEADER + 12];
      frame_header(f, F_ACCEPTED, 12);
      put32(f + FRAME_HEADER, 0);
      put64(f + FRAME_HEADER + 4, count);
      agent_send_on(s->a, f, sizeof f, link); // a link gone: its successor resumes from the saved position
      pthread_mutex_lock(&s->mu);
    }
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/** The replica rule of src/record/sequence.ts: 1 apply, 0 skip (held already), -1 a gap. */
static int admit(const svol_t *v, const rec_t *h, uint64_t *last, bool *rebase) {
  *last = v->last_seq;
  *rebase = v->rebase;
  if (h->kind == K_SYNC_BEGIN) {
    *rebase = true;
    return 1;
  }
  if (rec_between(h)) {
    if (v->rebase) return h->seq == 0 ? 1 : -1;
    if (h->seq == v->last_seq) return 1;
    return h->seq < v->last_seq ? 0 : -1;
  }
  if (v->rebase) {
    *rebase = false;
    *last = h->seq;
    return 1;
  }
  if (h->seq <= v->last_seq) return 0;
  if (h->seq != v->last_seq + 1) return -1;
  *last = h->seq;
  return 1;
}

static svol_t *vol_by_journal_id(struct standby *s, uint32_t id) {
  for (uint32_t i = 0; i < s->n; i++) {
    if (s->vols[i]->journal_id == id) return s->vols[i];
  }
  return NULL;
}

/** Takes one record; the caller holds mu, with `taking` set (freeze waits for it). */
static int take_locked(struct standby *s, const uint8_t *b, uint64_t len, char *why, size_t cap) {
  rec_t h;
  const char *bad = rec_decode(b, len, MAX_PAYLOAD, &h);
  if (bad) {
    snprintf(why, cap, "record from the gateway: %s", bad);
    return -1;
  }
  if (!rec_payload_ok(b, len, &h)) {
    snprintf(why, cap, "record %llu: payload checksum mismatch", (unsigned long long)h.seq);
    return -1;
  }
  svol_t *v = vol_by_journal_id(s, h.volume);
  if (!v) {
    snprintf(why, cap, "record for volume %u, which this standby does not hold", h.volume);
    return -1;
  }
  bool marker = h.kind == K_FLUSH || h.kind == K_SYNC_BEGIN || h.kind == K_SYNC_END;
  if (!marker && (h.offset > v->size || h.length > v->size - h.offset)) {
    snprintf(why, cap, "record %llu reaches past the end of %s", (unsigned long long)h.seq, v->name);
    return -1;
  }
  uint64_t last;
  bool rebase;
  int verdict = admit(v, &h, &last, &rebase);
  if (verdict < 0) {
    snprintf(why, cap, "record %llu of %s out of sequence (have %llu)", (unsigned long long)h.seq, v->name,
             (unsigned long long)v->last_seq);
    return -1;
  }
  if (verdict > 0 && h.kind == K_SYNC_BEGIN) {
    // "inconsistent" on disk, after everything before it, before any chunk of the synchronisation
    v->rebase = rebase;
    v->state = 2;
    uint64_t target = ++s->taken;
    pthread_cond_signal(&s->work);
    while (!s->stop && !s->failed[0] && s->synced < target) pthread_cond_wait(&s->done, &s->mu);
    if (s->failed[0]) {
      snprintf(why, cap, "%s", s->failed);
      return -1;
    }
    return 0;
  }
  if (verdict > 0 && h.kind == K_SYNC_END) {
    v->state = 1; // saved by the syncer after the chunks before it are durable
  } else if (verdict > 0) {
    // the data is written before the position may move past it (the syncer saves positions)
    pthread_mutex_unlock(&s->mu);
    int64_t r = io_apply_record(v->fd, b, &h);
    pthread_mutex_lock(&s->mu);
    if (r < 0) {
      snprintf(s->failed, sizeof s->failed, "standby copy %s: writing record %llu: %s", v->name,
               (unsigned long long)h.seq, strerror((int)-r));
      snprintf(why, cap, "%s", s->failed);
      log_failure(s);
      return -1;
    }
    if (h.kind != K_FLUSH) v->dirty = true;
    if (v->state == 0) v->state = 1;
  }
  if (verdict > 0) {
    v->last_seq = last;
    v->rebase = rebase;
  }
  s->taken++;
  return 0;
}

int standby_take(struct standby *s, const uint8_t *b, uint64_t len, uint64_t link, char *why, size_t cap) {
  pthread_mutex_lock(&s->mu);
  if (!s->enabled) {
    pthread_mutex_unlock(&s->mu);
    return 1;
  }
  if (s->frozen) {
    pthread_mutex_unlock(&s->mu);
    return 0;
  }
  if (link != s->link) { // a new link: counts start over, and a failure is tried again
    s->link = link;
    s->base = s->taken;
    s->acked = 0;
    s->failed[0] = 0;
  }
  int r;
  if (s->failed[0]) {
    snprintf(why, cap, "%s", s->failed);
    r = -1;
  } else {
    s->taking = true;
    r = take_locked(s, b, len, why, cap);
    s->taking = false;
    pthread_cond_broadcast(&s->done);
  }
  pthread_mutex_unlock(&s->mu);
  return r;
}

void standby_kick(struct standby *s) {
  pthread_mutex_lock(&s->mu);
  if (s->synced != s->taken && !s->busy) pthread_cond_signal(&s->work);
  pthread_mutex_unlock(&s->mu);
}

EXPORT int32_t cn_agent_standby_add(cn_agent *a, const char *name, uint32_t journal_id, int32_t fd, uint64_t size,
                                    uint64_t last_seq, int32_t state, const char *slot_path, char *err,
                                    uint64_t errcap) {
  struct standby *s = a->sb;
  if (state < 0 || state > 2 || strlen(name) >= sizeof s->vols[0]->name) {
    snprintf(err, errcap, "invalid standby copy %s", name);
    return -EINVAL;
  }
  pthread_mutex_lock(&s->mu);
  for (uint32_t i = 0; i < s->n; i++) {
    if (strcmp(s->vols[i]->name, name) == 0) { // known: the new link named it anew, its state is here
      s->vols[i]->journal_id = journal_id;
      pthread_mutex_unlock(&s->mu);
      return 0;
    }
  }
  int r = 0;
  svol_t *v = NULL;
  if (s->n == SB_VOLS) r = -ENOSPC;
  else if (!(v = calloc(1, sizeof *v))) r = -ENOMEM;
  else if ((v->slot_fd = open(slot_path, O_RDWR | O_CLOEXEC)) < 0) r = -errno;
  if (r == 0 && !s->started) {
    s->started = pthread_create(&s->thr, NULL, sync_main, s) == 0;
    if (!s->started) r = -EAGAIN;
  }
  if (r < 0) {
    if (v && v->slot_fd >= 0) close(v->slot_fd);
    free(v);
    pthread_mutex_unlock(&s->mu);
    snprintf(err, errcap, "standby copy %s: %s", name, strerror(-r));
    return r;
  }
  snprintf(v->name, sizeof v->name, "%s", name);
  v->journal_id = journal_id;
  v->fd = fd;
  v->size = size;
  v->last_seq = v->durable_seq = last_seq;
  v->state = v->durable_state = state;
  v->slot_gen = slot_generation(v->slot_fd);
  s->vols[s->n++] = v;
  pthread_mutex_unlock(&s->mu);
  return 0;
}

EXPORT int32_t cn_agent_standby_status(cn_agent *a, const char *name, uint64_t *out) {
  struct standby *s = a->sb;
  pthread_mutex_lock(&s->mu);
  int32_t r = -ENOENT;
  for (uint32_t i = 0; i < s->n && r; i++) {
    svol_t *v = s->vols[i];
    if (strcmp(v->name, name) != 0) continue;
    out[0] = v->last_seq;
    out[1] = v->durable_seq;
    out[2] = (uint64_t)v->state;
    out[3] = s->acked;
    out[4] = s->taken - s->base;
    r = 0;
  }
  pthread_mutex_unlock(&s->mu);
  return r;
}

EXPORT int32_t cn_agent_standby_freeze(cn_agent *a, char *err, uint64_t errcap) {
  struct standby *s = a->sb;
  pthread_mutex_lock(&s->mu);
  s->frozen = true;
  while (s->taking || s->busy || (s->synced < s->taken && !s->failed[0])) pthread_cond_wait(&s->done, &s->mu);
  int32_t r = 0;
  if (s->failed[0]) {
    snprintf(err, errcap, "%s", s->failed);
    r = -EIO;
  } else {
    release_vols(s);
  }
  pthread_mutex_unlock(&s->mu);
  return r;
}

EXPORT void cn_agent_standby_thaw(cn_agent *a) {
  struct standby *s = a->sb;
  pthread_mutex_lock(&s->mu);
  // the gateway streams anew to the copies announced from now on: counts start over, as on a new link
  s->enabled = true;
  s->frozen = false;
  s->base = s->taken;
  s->acked = 0;
  s->failed[0] = 0;
  pthread_mutex_unlock(&s->mu);
}

EXPORT int32_t cn_agent_standby_take(cn_agent *a, const uint8_t *record, uint64_t len, uint64_t link, char *why,
                                     uint64_t cap) {
  int r = standby_take(a->sb, record, len, link, why, cap);
  standby_kick(a->sb);
  return r;
}
