// Recovery chunk writes in the data plane, off the agent's link thread. A ChunkOp "write" for a
// captured volume of a fenced agent is unsealed by the link thread straight into a buffer of the
// chunk writers (agent.c), and one of them writes it and answers the gateway, while the link
// thread receives and unseals the next: the chunk is not copied into TypeScript's event loop (a
// full rebuild moves every byte of the volume this way), and receiving, decrypting and the copy
// into the page cache overlap. Anything else, and any write these checks would not accept, is
// left to TypeScript, which answers it (with the error, if it is one).
//
// The writers and their buffers start with the first chunk write and stop with the agent. Two
// writes of the same bytes land in the order the gateway sent them (it resends a chunk after a
// reconnection); writes of distinct chunks may end, and be answered, in any order (the gateway
// matches answers by request id). Before the fence lifts, queued writes are refused and those
// in progress end (chunk_writes_hold): no recovery write lands once clients may write.
#include "capture.h"

#include <sys/mman.h>

#define F_CHUNK_REPLY 31
#define CHUNK_MIN 4096.0
/** The largest chunk a recovery sends (the gateway's COPY_CHUNK_MAX, TypeScript's MAX_CHUNK). */
#define CHUNK_MAX (16u * 1024 * 1024)
/** Writer threads: two copies into the page cache run at once. */
#define CW_WRITERS 2

enum { SLOT_FREE = 0, SLOT_FILLING = 1, SLOT_QUEUED = 2, SLOT_BUSY = 3 };

struct cw_slot {
  int state;
  uint8_t *buf; // CHUNK_MAX bytes of the pool
  uint64_t seq; // queue order
  cvol *v;      // held against removal (vol_users) while queued or being written
  uint64_t off, id, epoch;
  uint32_t len;
};

struct chunk_writers {
  pthread_mutex_t mu; // before the agent's mu (volumes are looked up and released under it)
  pthread_cond_t work;  // writers wait for a queued write they may take
  pthread_cond_t freed; // the link thread waits for a free buffer; a hold for writes in progress
  cw_slot slots[CHUNK_WRITE_SLOTS];
  uint8_t *pool; // one mapping: pages are resident only once a chunk was written into them
  pthread_t thr[CW_WRITERS];
  int nthr;
  bool started, broken, stop;
  int held; // chunk_writes_hold calls not yet resumed: no write is taken
  uint64_t next_seq;
};

struct chunk_writers *chunk_writers_new(void) {
  struct chunk_writers *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->work, NULL);
  pthread_cond_init(&w->freed, NULL);
  return w;
}

EXPORT void cn_agent_serve_chunk_writes(cn_agent *a, int32_t on) {
  if (!on) chunk_writes_hold(a); // what is queued is refused, what is in progress ends
  pthread_mutex_lock(&a->fence_mu);
  a->chunk_writes = on != 0;
  pthread_mutex_unlock(&a->fence_mu);
  if (!on) chunk_writes_resume(a);
}

/** A whole number in [lo, hi]. */
static bool whole(double x, double lo, double hi) {
  return x >= lo && x <= hi && x == (double)(uint64_t)x;
}

/** Only a fenced agent's volumes take recovery writes: no client writes them meanwhile. */
static bool gate_open(cn_agent *a) {
  pthread_mutex_lock(&a->fence_mu);
  bool open = a->chunk_writes && a->fenced;
  pthread_mutex_unlock(&a->fence_mu);
  return open;
}

/** Finds a captured volume by name and holds it against removal (the caller releases vol_users). */
static cvol *volume_named(cn_agent *a, const char *name) {
  pthread_mutex_lock(&a->mu);
  cvol *v = NULL;
  for (uint32_t i = 0; i < a->nvols && !v; i++) {
    if (strcmp(a->vols[i]->name, name) == 0) v = a->vols[i];
  }
  if (v) a->vol_users++;
  pthread_mutex_unlock(&a->mu);
  return v;
}

static void volume_done(cn_agent *a) {
  pthread_mutex_lock(&a->mu);
  if (--a->vol_users == 0) pthread_cond_broadcast(&a->state_cv);
  pthread_mutex_unlock(&a->mu);
}

/** Answers a write on the connection that asked it (an answer for a link gone is dropped: the gateway asks again). */
static void reply(cn_agent *a, uint64_t id, uint64_t epoch, const char *error) {
  uint8_t f[FRAME_HEADER + 4 + 600];
  json_t j;
  json_begin(&j, (char *)f + FRAME_HEADER + 4, sizeof f - FRAME_HEADER - 4);
  json_uint(&j, "id", id);
  json_bool(&j, "ok", !error);
  if (error) json_str(&j, "error", error);
  uint32_t n = (uint32_t)strlen(json_end(&j));
  frame_header(f, F_CHUNK_REPLY, 4 + n);
  put32(f + FRAME_HEADER, n);
  agent_send_on(a, f, FRAME_HEADER + 4 + n, epoch);
}

/**
 * The oldest queued write no writer is writing over: a write whose bytes overlap one in progress
 * waits for it, and so do the later ones of the same bytes (they are younger), so writes of a
 * chunk land in the order they came.
 */
static cw_slot *next_write(struct chunk_writers *w) {
  cw_slot *best = NULL;
  for (int i = 0; i < CHUNK_WRITE_SLOTS; i++) {
    cw_slot *s = &w->slots[i];
    if (s->state != SLOT_QUEUED || (best && best->seq < s->seq)) continue;
    bool behind = false;
    for (int k = 0; k < CHUNK_WRITE_SLOTS && !behind; k++) {
      cw_slot *b = &w->slots[k];
      behind = b->state == SLOT_BUSY && b->v == s->v && b->off < s->off + s->len && s->off < b->off + b->len;
    }
    if (!behind) best = s;
  }
  return best;
}

static void *writer_main(void *arg) {
  thread_name("cn-chunk-write");
  cn_agent *a = arg;
  struct chunk_writers *w = a->cw;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    cw_slot *s = next_write(w);
    if (!s) {
      if (w->stop) break;
      pthread_cond_wait(&w->work, &w->mu);
      continue;
    }
    s->state = SLOT_BUSY;
    pthread_mutex_unlock(&w->mu);
    int64_t r = cn_pwrite(s->v->fd, s->buf, s->len, s->off);
    volume_done(a);
    reply(a, s->id, s->epoch, r < 0 ? strerror((int)-r) : NULL);
    pthread_mutex_lock(&w->mu);
    s->state = SLOT_FREE;
    s->v = NULL;
    pthread_cond_broadcast(&w->freed);
    pthread_cond_broadcast(&w->work); // a write of the same bytes may go now
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/** Maps the buffers and starts the writers (with w->mu held); on failure writes stay TypeScript's. */
static void writers_start(cn_agent *a, struct chunk_writers *w) {
  size_t bytes = (size_t)CHUNK_WRITE_SLOTS * CHUNK_MAX;
  void *pool = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  int r = pool == MAP_FAILED ? errno : 0;
  if (r == 0) {
    w->pool = pool;
    for (int i = 0; i < CHUNK_WRITE_SLOTS; i++) w->slots[i].buf = w->pool + (size_t)i * CHUNK_MAX;
    // one writer is enough to serve; a second one that cannot start only costs speed
    while (w->nthr < CW_WRITERS && (r = pthread_create(&w->thr[w->nthr], NULL, writer_main, a)) == 0) w->nthr++;
    if (w->nthr == 0) {
      munmap(w->pool, bytes);
      w->pool = NULL;
    }
  }
  w->started = w->nthr > 0;
  w->broken = !w->started;
  if (w->broken || w->nthr < CW_WRITERS) {
    char f[200];
    json_t j;
    json_begin(&j, f, sizeof f);
    json_str(&j, "error", strerror(r));
    json_int(&j, "writers", w->nthr);
    plane_log(a->plane, LOG_WARN, "recovery",
              w->broken ? "cannot start the recovery chunk writers: TypeScript writes the chunks"
                        : "a recovery chunk writer did not start",
              json_end(&j));
  }
}

void chunk_writers_free(cn_agent *a) {
  struct chunk_writers *w = a->cw;
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  w->stop = true;
  // the link has ended: queued writes go unwritten and unanswered (the gateway asks again)
  for (int i = 0; i < CHUNK_WRITE_SLOTS; i++) {
    cw_slot *s = &w->slots[i];
    if (s->state != SLOT_QUEUED) continue;
    s->state = SLOT_FREE;
    s->v = NULL;
    volume_done(a);
  }
  pthread_cond_broadcast(&w->work);
  pthread_mutex_unlock(&w->mu);
  for (int i = 0; i < w->nthr; i++) pthread_join(w->thr[i], NULL); // each ends the write it is in
  if (w->pool) munmap(w->pool, (size_t)CHUNK_WRITE_SLOTS * CHUNK_MAX);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->work);
  pthread_cond_destroy(&w->freed);
  free(w);
  a->cw = NULL;
}

void chunk_writes_hold(cn_agent *a) {
  struct chunk_writers *w = a->cw;
  struct {
    uint64_t id, epoch;
  } refused[CHUNK_WRITE_SLOTS];
  int nref = 0;
  pthread_mutex_lock(&w->mu);
  w->held++;
  for (int i = 0; i < CHUNK_WRITE_SLOTS; i++) {
    cw_slot *s = &w->slots[i];
    if (s->state != SLOT_QUEUED) continue;
    refused[nref].id = s->id;
    refused[nref++].epoch = s->epoch;
    s->state = SLOT_FREE;
    s->v = NULL;
    volume_done(a);
  }
  bool busy = true;
  while (busy) {
    busy = false;
    for (int i = 0; i < CHUNK_WRITE_SLOTS; i++) busy = busy || w->slots[i].state == SLOT_BUSY;
    if (busy) pthread_cond_wait(&w->freed, &w->mu);
  }
  // the recovery is over: the buffers' pages go back (they are mapped again by the next one)
  for (int i = 0; i < CHUNK_WRITE_SLOTS && w->pool; i++) {
    if (w->slots[i].state == SLOT_FREE) madvise(w->slots[i].buf, CHUNK_MAX, MADV_DONTNEED);
  }
  pthread_cond_broadcast(&w->freed);
  pthread_mutex_unlock(&w->mu);
  for (int i = 0; i < nref; i++) {
    reply(a, refused[i].id, refused[i].epoch, "the agent's fence was lifted before the chunk was written");
  }
}

void chunk_writes_resume(cn_agent *a) {
  struct chunk_writers *w = a->cw;
  pthread_mutex_lock(&w->mu);
  w->held--;
  pthread_mutex_unlock(&w->mu);
}

/** Parses a ChunkOp's head; true for a write of a volume (its fields out) that the writers may take. */
static bool write_head(const uint8_t *head, uint32_t head_len, char *volume, size_t vcap, uint64_t *id,
                       uint64_t *chunk, uint32_t *index) {
  if (head_len < 4) return false;
  uint32_t jl = get32(head);
  if (jl > MAX_CONTROL_FRAME || jl != head_len - 4) return false;
  const char *json = (const char *)head + 4;
  char op[16];
  double i, c, x;
  if (!json_get_str(json, jl, "op", op, sizeof op) || strcmp(op, "write") != 0) return false;
  if (!json_get_str(json, jl, "volume", volume, vcap) || !json_get_num(json, jl, "id", &i) ||
      !json_get_num(json, jl, "chunkSize", &c) || !json_get_num(json, jl, "index", &x)) {
    return false;
  }
  if (!strchr(volume, '/') || !whole(i, 0, 9007199254740991.0) || !whole(c, CHUNK_MIN, CHUNK_MAX) ||
      !whole(x, 0, 4294967295.0)) {
    return false;
  }
  *id = (uint64_t)i;
  *chunk = (uint64_t)c;
  *index = (uint32_t)x;
  return true;
}

bool chunk_write_wanted(const uint8_t *head, uint32_t head_len, uint64_t data_len) {
  char volume[200];
  uint64_t id, chunk;
  uint32_t index;
  return data_len > 0 && data_len <= CHUNK_MAX && write_head(head, head_len, volume, sizeof volume, &id, &chunk, &index);
}

cw_slot *chunk_slot_take(cn_agent *a, bool wait) {
  struct chunk_writers *w = a->cw;
  cw_slot *s = NULL;
  if (!gate_open(a)) return NULL; // a write TypeScript refuses starts no writer
  pthread_mutex_lock(&w->mu);
  if (!w->started && !w->broken) writers_start(a, w);
  while (w->started && !w->stop && !s) {
    for (int i = 0; i < CHUNK_WRITE_SLOTS && !s; i++) {
      if (w->slots[i].state == SLOT_FREE) s = &w->slots[i];
    }
    if (s) s->state = SLOT_FILLING;
    else if (!wait) break;
    else pthread_cond_wait(&w->freed, &w->mu); // backpressure: the link waits for the disk
  }
  pthread_mutex_unlock(&w->mu);
  return s;
}

uint8_t *chunk_slot_data(cw_slot *s) { return s->buf; }

void chunk_slot_drop(cn_agent *a, cw_slot *s) {
  struct chunk_writers *w = a->cw;
  pthread_mutex_lock(&w->mu);
  s->state = SLOT_FREE;
  pthread_cond_broadcast(&w->freed);
  pthread_mutex_unlock(&w->mu);
}

int agent_chunk_write(cn_agent *a, const uint8_t *head, uint32_t head_len, const uint8_t *data, uint64_t len,
                      cw_slot *s, uint64_t epoch) {
  char volume[200];
  uint64_t id, chunk;
  uint32_t index;
  if (!write_head(head, head_len, volume, sizeof volume, &id, &chunk, &index) || len > CHUNK_MAX) return 0;
  if (!gate_open(a)) return 0; // refused by TypeScript, without waiting for a buffer
  cw_slot *own = NULL;
  if (!s) {
    // unsealed in place (the batch held more chunks than free buffers): copied into one
    if (!(s = own = chunk_slot_take(a, true))) return 0;
    memcpy(s->buf, data, len);
  }
  struct chunk_writers *w = a->cw;
  pthread_mutex_lock(&w->mu);
  // checked again with the writers' lock held: a hold (the fence lifting) cannot pass a write
  cvol *v = w->held == 0 && gate_open(a) ? volume_named(a, strchr(volume, '/') + 1) : NULL;
  uint64_t off = (uint64_t)index * chunk;
  if (v && (off >= v->size || len != MIN(chunk, v->size - off))) {
    volume_done(a);
    v = NULL;
  }
  if (!v) {
    if (own) {
      own->state = SLOT_FREE;
      pthread_cond_broadcast(&w->freed);
    }
    pthread_mutex_unlock(&w->mu);
    return 0;
  }
  s->v = v;
  s->off = off;
  s->len = (uint32_t)len;
  s->id = id;
  s->epoch = epoch;
  s->seq = w->next_seq++;
  s->state = SLOT_QUEUED;
  pthread_cond_broadcast(&w->work);
  pthread_mutex_unlock(&w->mu);
  return 1;
}
