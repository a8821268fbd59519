// The write monitor of one volume. Every WRITE / TRIM / WRITE_ZEROES / FLUSH becomes a
// record, in one order (the arrival order of requests across all connections): it is
// sequenced at the queue head, sent to the local gateway and applied to the local disk in
// that order. The client's reply waits for the local write and the gateway's acceptance;
// FLUSH and FUA also wait for the local fdatasync and the gateway's durability.
//
// A chunk's bit in the persistent dirty map is durable before any write to it leaves the
// queue head, so whatever happens next (agent crash, gateway crash, gateway away in track
// mode) the chunks that may differ are known and resent from the local disk.
//
// Memory: an operation's frame (frame header, record header, payload) is read from the
// client straight into the volume's ring and stays there until the gateway has it durably
// (it is resent after a reconnect); a full ring makes clients wait.
#include "capture.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#define OPS_CAP 16384u
#define MAX_RESYNC_IN_FLIGHT 4u
#define SWEEP_INTERVAL_NS (2000LL * 1000000)
#define SWEEP_TIMEOUT_NS (30000LL * 1000000)
#define IDLE_RELEASE_NS (10000LL * 1000000)
#define REC_FRAME (FRAME_HEADER + REC_HEADER)

#define OP(v, i) (&(v)->ops[(i) % (v)->ops_cap])

static void log_vol(cvol *v, int level, const char *msg, const char *k, const char *val, const char *k2, int64_t n2) {
  cn_plane *p = v->agent->plane;
  if (!plane_logs(p, level)) return;
  char f[700];
  json_t j;
  json_begin(&j, f, sizeof f);
  json_str(&j, "volume", v->name);
  if (k) json_str(&j, k, val);
  if (k2) json_int(&j, k2, n2);
  plane_log(p, level, "capture", msg, json_end(&j));
}

static void resync_finished(cvol *v) {
  log_vol(v, LOG_INFO, "every chunk that may differ was resent", NULL, NULL, "chunks", (int64_t)v->resync_done);
}

static uint64_t persisted_gen(cvol *v) {
  pthread_mutex_lock(&v->dirty->mu);
  uint64_t g = v->dirty->persisted;
  pthread_mutex_unlock(&v->dirty->mu);
  return g;
}

static void settle(cvol *v, op_t *o, uint32_t err) {
  if (o->settled) return;
  o->settled = true;
  v->unsettled--;
  if (o->conn) nbd_reply(o->conn, o->handle, err);
  o->conn = NULL;
  if (v->unsettled == 0) pthread_cond_broadcast(&v->quiet);
}

static bool needs_durable(const op_t *o) { return o->kind == K_FLUSH || (o->flags & RF_FUA); }

/** Answers an operation once everything it waits for is done. */
static void check(cvol *v, op_t *o) {
  if (o->settled || !o->local_done) return;
  if (o->error) return settle(v, o, o->error);
  bool acc = o->tracked || (o->seq && o->seq <= v->accepted_seq);
  bool dur = o->tracked || (o->seq && o->seq <= v->durable_seq);
  if (acc && (!needs_durable(o) || dur)) settle(v, o, 0);
}

/** Frees operations from the tail once written, answered, and durable at the gateway (or not needing it). */
static void free_ops(cvol *v) {
  uint64_t before = v->q_tail;
  while (v->q_tail < v->q_release && v->q_tail < v->q_dur && v->q_tail < v->send_pin) {
    op_t *o = OP(v, v->q_tail);
    if (!o->local_done || !o->settled) break;
    v->ring_tail = o->ring_end;
    v->q_tail++;
  }
  if (v->q_tail == v->q_head) v->ring_tail = v->ring_head;
  if (v->q_tail != before) {
    pthread_cond_broadcast(&v->space);
    if (v->q_tail == v->q_head) pthread_cond_broadcast(&v->quiet);
  }
}

/**
 * Takes room for an operation of frame_len bytes at the queue's end, waiting when `wait` (an
 * NBD reader) or failing (housekeeping). Returns the operation, or NULL.
 */
static op_t *reserve(cvol *v, uint32_t frame_len, bool wait) {
  for (;;) {
    if (v->stop || v->removing) return NULL;
    uint64_t at = (v->ring_head + 7) & ~(uint64_t)7;
    uint64_t in_lap = at % v->ring_cap;
    if (in_lap + frame_len > v->ring_cap) at += v->ring_cap - in_lap; // a frame never wraps
    uint64_t end = at + frame_len;
    bool room = v->q_head - v->q_tail < v->ops_cap && end - v->ring_tail <= v->ring_cap;
    if (room) {
      op_t *o = OP(v, v->q_head);
      memset(o, 0, sizeof *o);
      o->frame = v->ring + (at % v->ring_cap);
      o->frame_len = frame_len;
      o->ring_end = end;
      v->ring_head = end;
      v->q_head++;
      v->idle_since = 0;
      return o;
    }
    if (!wait) return NULL;
    pthread_cond_wait(&v->space, &v->mu);
  }
}

bool capture_readonly(cvol *v) {
  cn_agent *a = v->agent;
  pthread_mutex_lock(&a->fence_mu);
  bool ro = a->fenced;
  pthread_mutex_unlock(&a->fence_mu);
  return ro;
}

int capture_fd(cvol *v) { return v->fd; }
uint64_t capture_size(cvol *v) { return v->size; }

void capture_hold(cvol *v) {
  pthread_mutex_lock(&v->mu);
  v->holds++;
  pthread_mutex_unlock(&v->mu);
}

void capture_unhold(cvol *v) {
  pthread_mutex_lock(&v->mu);
  v->holds--;
  pthread_cond_broadcast(&v->quiet);
  pthread_mutex_unlock(&v->mu);
}

static int64_t apply_local(cvol *v, op_t *o);
static void local_failed(cvol *v, int64_t err);

/** A plain write, trim or zeroing: what a reader may write itself (syncs and resync reads stay with the writer). */
static bool inline_eligible(const op_t *o) {
  return o->kind != K_FLUSH && !needs_durable(o) && !o->resync && !o->voided && !o->local_done;
}

/** Writes an operation the reader claimed (v->local_busy held), then lets the writer go on. */
static void write_inline(cvol *v, op_t *o) {
  int64_t r = apply_local(v, o);
  pthread_mutex_lock(&v->mu);
  if (r < 0) {
    o->error = nbd_code_for_errno((int)-r);
    local_failed(v, r);
  }
  o->local_done = true;
  v->local_busy = false;
  check(v, o);
  free_ops(v);
  pthread_cond_broadcast(&v->quiet);
  // the writer waited for this write (a resync read, later operations, a sync): it goes on now
  if (v->writer_held) pthread_cond_broadcast(&v->work);
  pthread_mutex_unlock(&v->mu);
}

int capture_submit(cvol *v, nbd_conn *c, uint64_t handle, int cmd, uint16_t flags, uint64_t offset, uint32_t length,
                   rbuf_t *r) {
  uint32_t payload = cmd == CMD_WRITE ? length : 0;
  if (cmd != CMD_FLUSH && capture_readonly(v)) {
    if (payload && rbuf_skip(r, payload) < 0) return -EPIPE;
    return NBD_EPERM;
  }
  uint8_t kind = cmd == CMD_WRITE ? K_WRITE : cmd == CMD_TRIM ? K_TRIM : cmd == CMD_WRITE_ZEROES ? K_ZERO : K_FLUSH;
  uint8_t rflags = (uint8_t)(((flags & CMD_FLAG_FUA) ? RF_FUA : 0) |
                             (kind == K_ZERO && !(flags & CMD_FLAG_NO_HOLE) ? RF_MAY_TRIM : 0));
  pthread_mutex_lock(&v->mu);
  op_t *o = reserve(v, REC_FRAME + payload, false);
  if (!o && !v->stop && !v->removing) {
    // the ring is full: what this reader still owes the gateway must go before it waits for room
    pthread_mutex_unlock(&v->mu);
    agent_send_deferred(v->agent);
    pthread_mutex_lock(&v->mu);
    o = reserve(v, REC_FRAME + payload, true);
  }
  if (!o) {
    pthread_mutex_unlock(&v->mu);
    if (payload && rbuf_skip(r, payload) < 0) return -EPIPE;
    return NBD_EIO; // the volume is being removed
  }
  o->kind = kind;
  o->flags = rflags;
  o->offset = kind == K_FLUSH ? 0 : offset;
  o->length = kind == K_FLUSH ? 0 : length;
  o->conn = c;
  o->handle = handle;
  o->deadline = mono_ns() + v->agent->gateway_timeout_ns;
  v->unsettled++;
  v->arrivals++;
  uint8_t *frame = o->frame;
  pthread_mutex_unlock(&v->mu);
  if (payload) {
    // straight from the socket into the ring; its checksum is taken here, outside the lock
    if (rbuf_read(r, frame + REC_FRAME, payload) < 0) {
      pthread_mutex_lock(&v->mu);
      o->voided = o->filled = o->settled = true;
      v->unsettled--;
      o->conn = NULL;
      cvol_pump(v);
      free_ops(v);
      pthread_mutex_unlock(&v->mu);
      return -EPIPE;
    }
  }
  hash128(frame + REC_FRAME, payload, frame + FRAME_HEADER + REC_O_SUM);
  agent_defer_send(true);
  pthread_mutex_lock(&v->mu);
  // only now may the queue head take it: its payload and checksum are in place
  o->filled = true;
  if (kind != K_FLUSH) {
    uint64_t first, last;
    dirty_range(v->dirty, o->offset, o->length, &first, &last);
    for (uint64_t ch = first; ch <= last; ch++) v->touched[ch >> 3] |= (uint8_t)(1u << (ch & 7));
    o->dirty_gen = dirty_mark(v->dirty, o->offset, o->length);
    if (o->dirty_gen) pthread_cond_signal(&v->persist);
  }
  v->writes++;
  v->bytes_written += payload;
  // with nothing else waiting for the local disk, the reader writes the operation itself after
  // sending it: that saves waking the local writer, a thread hand-off per write (also at queue
  // depth 16: with the inline replies, +12 % IOPS). Behind others, the writer writes it in order.
  v->inline_local = !v->local_busy && v->q_local == v->q_release;
  cvol_pump(v);
  bool mine = v->inline_local && !v->local_busy && v->q_local + 1 == v->q_release && OP(v, v->q_local) == o &&
              inline_eligible(o);
  v->inline_local = false;
  if (mine) {
    v->local_busy = true;
    v->q_local++;
  } else if (v->q_local < v->q_release) {
    pthread_cond_broadcast(&v->work);
  }
  pthread_mutex_unlock(&v->mu);
  agent_defer_send(false);
  // requests read in one go leave as one batch: the last of them sends it (one send, one
  // append and one acknowledgement at the gateway for the burst instead of one per write)
  if (!nbd_next_captured(r)) agent_send_deferred(v->agent);
  if (mine) write_inline(v, o);
  return 0;
}

void capture_send_owed(cvol *v) { agent_send_deferred(v->agent); }

static void feed_resync(cvol *v);

void cvol_pump(cvol *v) {
  cn_agent *a = v->agent;
  bool sent = false;
  uint64_t persisted = UINT64_MAX;
  // the next chunks of a resynchronisation join the queue as earlier ones leave it
  feed_resync(v);
  while (v->q_release < v->q_head) {
    op_t *o = OP(v, v->q_release);
    if (!o->filled) break;
    if (o->voided) {
      o->released = o->local_done = true;
      v->q_release++;
      continue;
    }
    if (o->dirty_gen) {
      if (persisted == UINT64_MAX) persisted = persisted_gen(v);
      if (o->dirty_gen > persisted) break;
    }
    if (v->link == LINK_SYNCED) {
      if (o->resync) {
        // a fenced volume sends nothing: its chunks wait until recovery made the copies current
        if (capture_readonly(v)) break;
        if (!o->read_done) {
          if (!o->read_started) {
            o->read_started = true;
            pthread_cond_broadcast(&v->work);
          }
          break;
        }
        if (o->read_failed) {
          // the chunk stays marked; it is tried again on the next connection
          o->voided = o->released = o->local_done = true;
          v->q_release++;
          v->resync_in_flight--;
          v->dropped = true;
          continue;
        }
      }
      o->seq = ++v->seq;
      rec_t h = {.kind = o->kind,
                 .flags = o->flags,
                 .volume = v->link_id,
                 .length = o->length,
                 .seq = o->seq,
                 .offset = o->offset,
                 .time = wall_ms(),
                 .pos = 0};
      frame_header(o->frame, F_RECORD, o->frame_len - FRAME_HEADER);
      rec_seal_header(o->frame + FRAME_HEADER, &h);
      v->unconfirmed += o->frame_len;
      if (o->resync) {
        o->local_done = true;
        v->resync_in_flight--;
        v->resync_done++;
        if (!v->resync_active && v->resync_in_flight == 0) resync_finished(v);
      }
      sent = true;
    } else if (a->track && v->link == LINK_DOWN) {
      if (o->resync) {
        o->voided = o->released = o->local_done = true;
        v->q_release++;
        v->resync_in_flight--;
        continue;
      }
      o->tracked = true;
      v->dropped = true;
    } else {
      break; // block mode (or a connection being opened): wait for the gateway
    }
    o->released = true;
    v->q_release++;
  }
  if (v->q_local < v->q_release && !v->inline_local) pthread_cond_broadcast(&v->work);
  if (sent) agent_wake_sender(a);
  // acknowledgements may have waited for operations to be sequenced (tracked ones need none)
  while (v->q_acc < v->q_release) {
    op_t *o = OP(v, v->q_acc);
    if (o->seq && o->seq > v->accepted_seq) break;
    check(v, o);
    v->q_acc++;
  }
  while (v->q_dur < v->q_release) {
    op_t *o = OP(v, v->q_dur);
    if (o->seq && o->seq > v->durable_seq) break;
    check(v, o);
    v->q_dur++;
  }
  free_ops(v);
  if (v->q_release == v->q_head) pthread_cond_broadcast(&v->quiet);
}

// ---- the local writer: operations in sequence order, one batch at a time ----

static int64_t apply_local(cvol *v, op_t *o) {
  switch (o->kind) {
  case K_WRITE: return io_pwrite(v->fd, o->frame + REC_FRAME, o->length, o->offset);
  case K_TRIM: return io_punch(v->fd, o->offset, o->length);
  case K_ZERO: return io_zero(v->fd, o->offset, o->length, (o->flags & RF_MAY_TRIM) != 0);
  default: return 0;
  }
}

/** The gateway may hold what the disk refused: the chunk is resent from the disk later. */
static void local_failed(cvol *v, int64_t err) {
  v->dropped = true;
  char e[64];
  snprintf(e, sizeof e, "%s", strerror((int)-err));
  log_vol(v, LOG_ERROR, "local write failed", "error", e, NULL, 0);
}

static bool all_zero(const uint8_t *p, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    if (w) return false;
  }
  for (; i < n; i++) {
    if (p[i]) return false;
  }
  return true;
}

/** Reads a resynchronised chunk from the disk, after everything before it was written. */
static void resync_read(cvol *v, op_t *o) {
  uint8_t *payload = o->frame + REC_FRAME;
  uint64_t off = o->offset;
  uint32_t len = o->length;
  pthread_mutex_unlock(&v->mu);
  int rfd = v->rfd >= 0 ? v->rfd : v->fd;
  int64_t r = io_pread(rfd, payload, len, off);
  if (r >= 0 && (uint64_t)r < len) memset(payload + r, 0, len - (uint64_t)r);
  // read once: its pages would only crowd the application's cache
  if (r >= 0) posix_fadvise(rfd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
  bool zero = r >= 0 && all_zero(payload, len);
  if (r >= 0 && !zero) hash128(payload, len, o->frame + FRAME_HEADER + REC_O_SUM);
  if (r < 0) {
    char e[64];
    snprintf(e, sizeof e, "%s", strerror((int)-r));
    log_vol(v, LOG_ERROR, "resync read failed", "error", e, "offset", (int64_t)off);
  }
  pthread_mutex_lock(&v->mu);
  if (zero) {
    // a chunk of zeroes travels as a zeroing record, with no payload
    o->kind = K_ZERO;
    o->flags = RF_MAY_TRIM;
    o->frame_len = REC_FRAME;
    hash128(NULL, 0, o->frame + FRAME_HEADER + REC_O_SUM);
  }
  o->read_failed = r < 0;
  o->read_done = true;
  cvol_pump(v);
}

static void *writer_main(void *arg) {
  thread_name("cn-vol-write");
  cvol *v = arg;
  pthread_mutex_lock(&v->mu);
  for (;;) {
    if (v->local_busy) {
      // a reader is writing an operation it claimed: what follows waits for it (order, syncs)
      v->writer_held = true;
      pthread_cond_wait(&v->work, &v->mu);
      v->writer_held = false;
      continue;
    }
    op_t *head = v->q_release < v->q_head ? OP(v, v->q_release) : NULL;
    bool read_due = head && head->resync && head->read_started && !head->read_done && v->q_local == v->q_release;
    if (v->q_local < v->q_release) {
      uint64_t from = v->q_local, to = v->q_release;
      v->q_local = to;
      v->local_busy = true;
      pthread_mutex_unlock(&v->mu);
      bool sync = false;
      int64_t first_err = 0;
      for (uint64_t i = from; i < to; i++) {
        op_t *o = OP(v, i);
        if (o->voided || o->resync || o->local_done) continue;
        int64_t r = apply_local(v, o);
        if (r < 0) {
          o->error = nbd_code_for_errno((int)-r);
          if (!first_err) first_err = r;
        }
        if (needs_durable(o)) sync = true;
      }
      pthread_mutex_lock(&v->mu);
      if (first_err) local_failed(v, first_err);
      for (uint64_t i = from; i < to; i++) {
        op_t *o = OP(v, i);
        if (o->voided || o->resync || o->local_done || (sync && needs_durable(o) && !o->error)) continue;
        o->local_done = true;
        check(v, o);
      }
      if (sync) {
        uint64_t covers = v->sync_req;
        pthread_mutex_unlock(&v->mu);
        int r = fdatasync(v->fd) < 0 ? -errno : 0;
        pthread_mutex_lock(&v->mu);
        if (r == 0 && covers > v->sync_done) v->sync_done = covers;
        for (uint64_t i = from; i < to; i++) {
          op_t *o = OP(v, i);
          if (o->voided || o->resync || o->local_done) continue;
          if (r < 0) o->error = nbd_code_for_errno(-r);
          o->local_done = true;
          check(v, o);
        }
        if (r < 0) {
          v->dropped = true;
          log_vol(v, LOG_ERROR, "local write failed", "error", strerror(-r), NULL, 0);
        }
      }
      v->local_busy = false;
      free_ops(v);
      pthread_cond_broadcast(&v->quiet);
      continue;
    }
    if (read_due) {
      resync_read(v, head);
      continue;
    }
    if (v->sync_req != v->sync_done) {
      uint64_t target = v->sync_req;
      pthread_mutex_unlock(&v->mu);
      int r = fdatasync(v->fd);
      pthread_mutex_lock(&v->mu);
      if (r == 0) v->sync_done = target;
      else v->sync_req = v->sync_done; // nobody waits for a failed sync; the next sweep asks again
      pthread_cond_broadcast(&v->quiet);
      continue;
    }
    if (v->stop) break;
    pthread_cond_wait(&v->work, &v->mu);
  }
  pthread_mutex_unlock(&v->mu);
  return NULL;
}

// ---- the dirty map persister: a chunk's first write waits for its bit on disk ----

static void *persister_main(void *arg) {
  thread_name("cn-dirty-map");
  cvol *v = arg;
  pthread_mutex_lock(&v->mu);
  for (;;) {
    pthread_mutex_lock(&v->dirty->mu);
    bool due = v->dirty->changes > v->dirty->persisted && !v->dirty->failure;
    pthread_mutex_unlock(&v->dirty->mu);
    if (!due) {
      if (v->stop) break;
      pthread_cond_wait(&v->persist, &v->mu);
      continue;
    }
    pthread_mutex_unlock(&v->mu);
    int r = dirty_persist(v->dirty);
    pthread_mutex_lock(&v->mu);
    if (r < 0) {
      // without a durable mark a write could later be lost silently: refuse it
      log_vol(v, LOG_ERROR, "dirty map write failed: refusing writes to unmarked chunks", "error", strerror(-r), NULL,
              0);
      uint64_t persisted = persisted_gen(v);
      for (uint64_t i = v->q_release; i < v->q_head; i++) {
        op_t *o = OP(v, i);
        if (o->filled && o->dirty_gen > persisted && !o->voided) {
          o->voided = true;
          settle(v, o, NBD_EIO);
        }
      }
    }
    cvol_pump(v);
  }
  pthread_mutex_unlock(&v->mu);
  return NULL;
}

// ---- the link's side ----

static void start_resync(cvol *v) {
  v->resync_total = dirty_count(v->dirty);
  v->resync_done = 0;
  v->resync_chunk = 0;
  v->resync_active = v->resync_total > 0;
  v->dropped = false;
  if (v->resync_total > 0) {
    log_vol(v, LOG_INFO, "resending chunks that may differ from the gateway", NULL, NULL, "chunks",
            (int64_t)v->resync_total);
  }
}

/** Queues chunks of the dirty map to be resent, ordered with live writes. */
static void feed_resync(cvol *v) {
  // a fenced volume sends nothing: its dirty chunks wait until recovery made the copies current
  if (capture_readonly(v)) return;
  while (v->link == LINK_SYNCED && v->resync_active && v->resync_in_flight < MAX_RESYNC_IN_FLIGHT) {
    uint64_t c = dirty_next_set(v->dirty, v->resync_chunk);
    if (c == UINT64_MAX) {
      v->resync_active = false;
      if (v->resync_in_flight == 0) resync_finished(v);
      break;
    }
    uint64_t off = c * v->dirty->chunk;
    uint32_t len = (uint32_t)MIN(v->dirty->chunk, v->size - off);
    op_t *o = reserve(v, REC_FRAME + len, false);
    if (!o) break; // the ring is full: fed again from the next tick
    v->resync_chunk = c + 1;
    o->kind = K_WRITE;
    o->offset = off;
    o->length = len;
    o->resync = o->filled = o->settled = true;
    v->resync_in_flight++;
  }
}

/** Forgets the old sequence: what waited for it is covered by the dirty map now. */
static void restart_sequence(cvol *v, uint64_t last_seq) {
  v->seq = v->accepted_seq = v->durable_seq = last_seq;
  v->unconfirmed = 0;
  for (uint64_t i = v->q_tail; i < v->q_release; i++) {
    op_t *o = OP(v, i);
    if (o->seq) {
      o->seq = 0;
      o->tracked = true;
    }
  }
  v->q_send = v->q_release;
  v->q_acc = v->q_dur = v->q_tail;
}

void cvol_on_opened(cvol *v, uint64_t last_seq, bool known) {
  pthread_mutex_lock(&v->mu);
  v->opened_once = true;
  v->link_epoch++;
  // the records kept since the last confirmation, if they continue where the gateway stands
  uint64_t first = 0;
  for (uint64_t i = v->q_dur; i < v->q_release && !first; i++) first = OP(v, i)->seq;
  bool covered = first != 0 && first <= last_seq + 1;
  if (!known) {
    log_vol(v, LOG_INFO, "gateway has no copy of this volume: full synchronisation", NULL, NULL, NULL, 0);
    restart_sequence(v, last_seq);
    dirty_mark_all(v->dirty);
    pthread_cond_signal(&v->persist);
    v->dropped = true;
  } else if (v->dropped || last_seq > v->seq || (last_seq < v->seq && !covered)) {
    restart_sequence(v, last_seq);
    if (dirty_count(v->dirty) > 0) v->dropped = true;
  } else {
    // the same session goes on: what the gateway did not keep is sent again
    v->q_send = v->q_release;
    for (uint64_t i = v->q_dur; i < v->q_release; i++) {
      uint64_t s = OP(v, i)->seq;
      if (s && s > last_seq) {
        v->q_send = i;
        break;
      }
    }
  }
  v->link = LINK_SYNCED;
  if (v->dropped) start_resync(v);
  feed_resync(v);
  cvol_pump(v);
  if (v->q_send < v->q_release) agent_wake_sender(v->agent);
  pthread_mutex_unlock(&v->mu);
}

void cvol_on_refused(cvol *v, const char *message) {
  pthread_mutex_lock(&v->mu);
  v->link = LINK_DOWN;
  bool fatal = v->opened_once;
  pthread_mutex_unlock(&v->mu);
  log_vol(v, LOG_ERROR, "gateway refused the volume", "reason", message, NULL, 0);
  char body[700];
  json_t j;
  json_begin(&j, body, sizeof body);
  json_str(&j, "volume", v->name);
  json_str(&j, "error", message);
  plane_post(v->agent->plane, CN_EV_VOLUME, v->link_id, fatal ? CN_VOL_FATAL : CN_VOL_REFUSED, body,
             strlen(json_end(&j)), NULL, 0, true);
}

void cvol_on_link_down(cvol *v) {
  pthread_mutex_lock(&v->mu);
  v->link_epoch++;
  v->link = LINK_DOWN;
  // a resynchronisation cut short starts over from the dirty map on the next connection
  if (v->agent->track || v->resync_active || v->resync_in_flight > 0) v->dropped = true;
  v->resync_active = false;
  cvol_pump(v);
  pthread_mutex_unlock(&v->mu);
}

void cvol_on_accepted(cvol *v, uint64_t seq) {
  pthread_mutex_lock(&v->mu);
  if (seq > v->accepted_seq && seq <= v->seq) v->accepted_seq = seq;
  cvol_pump(v);
  pthread_mutex_unlock(&v->mu);
}

void cvol_on_durable(cvol *v, uint64_t seq) {
  pthread_mutex_lock(&v->mu);
  if (seq > v->durable_seq && seq <= v->seq) {
    for (uint64_t i = v->q_dur; i < v->q_release; i++) {
      op_t *o = OP(v, i);
      if (o->seq && o->seq > seq) break;
      if (o->seq) v->unconfirmed -= MIN(v->unconfirmed, o->frame_len);
    }
    v->durable_seq = seq;
    if (seq > v->accepted_seq) v->accepted_seq = seq;
  }
  cvol_pump(v);
  feed_resync(v);
  pthread_mutex_unlock(&v->mu);
}

uint32_t cvol_take_frames(cvol *v, const uint8_t **ptrs, uint32_t *lens, uint32_t max, uint64_t max_bytes,
                          uint64_t *through) {
  uint32_t n = 0;
  uint64_t bytes = 0, i = v->q_send;
  if (v->link == LINK_SYNCED) {
    for (; i < v->q_release && n < max; i++) {
      op_t *o = OP(v, i);
      if (!o->seq) continue;
      // one batch holds one large frame, or many small ones
      if (n > 0 && bytes + o->frame_len > max_bytes) break;
      ptrs[n] = o->frame;
      lens[n] = o->frame_len;
      bytes += o->frame_len;
      n++;
    }
  }
  if (n > 0) v->send_pin = v->q_send;
  *through = i;
  return n;
}

void cvol_sent(cvol *v, uint64_t through) {
  if (through > v->q_send) v->q_send = through;
  v->send_pin = UINT64_MAX;
  free_ops(v);
}

bool cvol_has_frames(cvol *v) { return v->link == LINK_SYNCED && v->q_send < v->q_release; }

bool cvol_quiescent(cvol *v) {
  return v->q_release == v->q_head && v->unsettled == 0 && v->link == LINK_SYNCED && v->durable_seq >= v->seq &&
         !v->resync_active && v->resync_in_flight == 0 && !v->dropped;
}

void cvol_tick(cvol *v, int64_t now) {
  pthread_mutex_lock(&v->mu);
  cn_agent *a = v->agent;
  if (v->link == LINK_SYNCED) {
    // a local write failed after its record was sent: the disk's content goes again (in order)
    if (v->dropped && !v->resync_active && v->resync_in_flight == 0) start_resync(v);
    feed_resync(v);
    cvol_pump(v);
  } else if (!a->track) {
    // block mode: a request waiting for an absent gateway fails after the timeout (it is still sent later)
    for (uint64_t i = v->q_tail; i < v->q_head; i++) {
      op_t *o = OP(v, i);
      if (!o->settled && o->deadline <= now && !o->voided && o->filled) settle(v, o, NBD_EIO);
    }
  }
  // the sweep: chunks both sides provably hold are cleared from the dirty map
  switch (v->sweep_phase) {
  case 0: {
    bool idle = !v->sticky && v->link == LINK_SYNCED && !v->dropped && !v->resync_active && v->resync_in_flight == 0;
    if (!idle || now < v->sweep_at) break;
    // chunks written during the last interval stay marked: hot chunks would otherwise be
    // cleared and marked again (a dirty map sync each) over and over. With none left to clear
    // (every marked chunk written since: a steady load over the whole volume) the sweep would
    // only cost a sync of the disk: it waits for the next interval
    pthread_mutex_lock(&v->dirty->mu);
    bool any = false;
    for (uint64_t i = 0; i < v->dirty->bytes && !any; i++) any = (v->dirty->bits[i] & ~v->touched[i]) != 0;
    pthread_mutex_unlock(&v->dirty->mu);
    if (!any) {
      memset(v->touched, 0, v->dirty->bytes);
      v->sweep_at = now + SWEEP_INTERVAL_NS;
      break;
    }
    memcpy(v->recent, v->touched, v->dirty->bytes);
    memset(v->touched, 0, v->dirty->bytes);
    v->sweep_mark = v->q_head;
    v->sweep_epoch = v->link_epoch;
    v->sweep_phase = 1;
    v->sweep_at = now + SWEEP_TIMEOUT_NS;
    break;
  }
  case 1:
  case 2: {
    bool gone = v->sweep_epoch != v->link_epoch || now > v->sweep_at || v->dropped || v->resync_active ||
                v->resync_in_flight > 0;
    if (gone) {
      v->sweep_phase = 0;
      v->sweep_at = now + SWEEP_INTERVAL_NS;
      break;
    }
    if (v->sweep_phase == 1) {
      if (v->q_release < v->sweep_mark) break;
      // what arrived before the sweep is sequenced: sync the disk, wait for the gateway's durability
      v->sweep_mark = v->seq;
      v->sync_req++;
      pthread_cond_broadcast(&v->work);
      v->sweep_phase = 2;
      break;
    }
    if (v->sync_done < v->sync_req || v->durable_seq < v->sweep_mark) break;
    pthread_mutex_lock(&v->dirty->mu);
    for (uint64_t c = 0; c < v->dirty->chunks; c++) {
      uint64_t i = c >> 3;
      uint8_t m = (uint8_t)(1u << (c & 7));
      if ((v->dirty->bits[i] & m) && !(v->touched[i] & m) && !(v->recent[i] & m)) dirty_clear_chunk_locked(v->dirty, c);
    }
    uint64_t gen = dirty_clear_done(v->dirty);
    pthread_mutex_unlock(&v->dirty->mu);
    if (gen) pthread_cond_signal(&v->persist);
    v->sweep_phase = 0;
    v->sweep_at = now + SWEEP_INTERVAL_NS;
    break;
  }
  }
  // an idle volume gives its ring's memory back (a busy one keeps reusing it)
  if (v->q_tail == v->q_head && v->ring_head > 0) {
    if (!v->idle_since) v->idle_since = now;
    else if (now - v->idle_since > IDLE_RELEASE_NS) {
      madvise(v->ring, v->ring_cap, MADV_DONTNEED);
      v->idle_since = INT64_MAX / 2;
    }
  }
  // the link coming up or a resend ending may be what made it quiescent: its waiters re-check
  if (cvol_quiescent(v)) pthread_cond_broadcast(&v->quiet);
  pthread_mutex_unlock(&v->mu);
}

/** With v->mu held: waits until quiescent or the deadline passed; whether it is. */
static bool wait_quiet_locked(cvol *v, const struct timespec *until) {
  while (!cvol_quiescent(v)) {
    if (!cond_wait_until(&v->quiet, &v->mu, until)) return cvol_quiescent(v);
  }
  return true;
}

bool cvol_wait_quiet(cvol *v, int wait_ms) {
  pthread_mutex_lock(&v->mu);
  struct timespec until = deadline_in(wait_ms);
  bool quiet = wait_quiet_locked(v, &until);
  pthread_mutex_unlock(&v->mu);
  return quiet;
}

void cvol_drain(cvol *v, int wait_ms) {
  pthread_mutex_lock(&v->mu);
  struct timespec until = deadline_in(wait_ms);
  wait_quiet_locked(v, &until);
  v->sync_req++;
  uint64_t want = v->sync_req;
  pthread_cond_broadcast(&v->work);
  struct timespec sync_until = deadline_in(30000);
  while (v->sync_done < want && cond_wait_until(&v->quiet, &v->mu, &sync_until)) {
  }
  bool quiet = cvol_quiescent(v);
  if (quiet && !v->sticky) {
    pthread_mutex_lock(&v->dirty->mu);
    for (uint64_t c = 0; c < v->dirty->chunks; c++) dirty_clear_chunk_locked(v->dirty, c);
    dirty_clear_done(v->dirty);
    pthread_mutex_unlock(&v->dirty->mu);
  } else {
    log_vol(v, LOG_WARN, "stopping with records not confirmed by the gateway; they are resent on the next start", NULL,
            NULL, "chunks", (int64_t)dirty_count(v->dirty));
  }
  v->removing = true;
  pthread_cond_broadcast(&v->space);
  for (uint64_t i = v->q_tail; i < v->q_head; i++) settle(v, OP(v, i), NBD_EIO);
  pthread_mutex_unlock(&v->mu);
  if (quiet) dirty_persist(v->dirty);
}

void cvol_status(cvol *v, uint64_t *out) {
  pthread_mutex_lock(&v->mu);
  out[0] = (uint64_t)v->link;
  out[1] = v->seq;
  out[2] = v->accepted_seq;
  out[3] = v->durable_seq;
  out[4] = v->q_head - v->q_release;
  out[5] = v->unsettled;
  out[6] = v->unconfirmed;
  out[7] = dirty_count(v->dirty);
  out[8] = v->resync_total;
  out[9] = v->resync_done;
  out[10] = v->resync_active ? v->resync_total - MIN(v->resync_total, v->resync_done) : v->resync_in_flight;
  out[11] = cvol_quiescent(v);
  out[12] = capture_readonly(v);
  out[13] = v->writes;
  out[14] = v->bytes_written;
  out[15] = v->q_head - v->q_tail;
  pthread_mutex_unlock(&v->mu);
}

int cvol_new(cn_agent *a, uint32_t link_id, const char *name, int fd, uint64_t size, const char *dirty_path,
             uint64_t chunk, int dirty_mode, cvol **out, char *err, size_t errcap) {
  if (strlen(name) == 0 || strlen(name) > 64) {
    snprintf(err, errcap, "volume name must be 1 to 64 characters");
    return -EINVAL;
  }
  cvol *v = calloc(1, sizeof *v);
  if (!v) return -ENOMEM;
  v->agent = a;
  v->link_id = link_id;
  snprintf(v->name, sizeof v->name, "%s", name);
  v->fd = fd;
  v->rfd = -1;
  v->size = size;
  v->send_pin = UINT64_MAX;
  // the ring holds what is unconfirmed; at least two of the largest frames fit
  v->ring_cap = MAX(a->max_unconfirmed, 2ull * (REC_FRAME + MAX_PAYLOAD) + 64);
  v->ring_cap = (v->ring_cap + 4095) & ~(uint64_t)4095;
  v->ring = mmap(NULL, v->ring_cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  v->ops_cap = OPS_CAP;
  v->ops = calloc(v->ops_cap, sizeof(op_t));
  if (v->ring == MAP_FAILED || !v->ops) {
    if (v->ring != MAP_FAILED) munmap(v->ring, v->ring_cap);
    free(v->ops);
    free(v);
    snprintf(err, errcap, "volume %s: cannot reserve %llu bytes of memory", name, (unsigned long long)a->max_unconfirmed);
    return -ENOMEM;
  }
  bool fresh = false;
  int r = dirty_open(dirty_path, size, chunk, &v->dirty, &fresh, err, errcap);
  if (r < 0) {
    munmap(v->ring, v->ring_cap);
    free(v->ops);
    free(v);
    return r;
  }
  // resync reads leave no large folios behind (io_open_reader); without one they use fd
  v->rfd = io_open_reader(fd);
  v->sticky = (dirty_mode & CN_DIRTY_STICKY) != 0;
  dirty_mode &= ~CN_DIRTY_STICKY;
  if (dirty_mode == 1) {
    // the gateway's copy is known to equal this one (a promotion that waited for it)
    pthread_mutex_lock(&v->dirty->mu);
    for (uint64_t c = 0; c < v->dirty->chunks; c++) dirty_clear_chunk_locked(v->dirty, c);
    dirty_clear_done(v->dirty);
    pthread_mutex_unlock(&v->dirty->mu);
  } else if (dirty_mode == 2) {
    dirty_mark_all(v->dirty);
  }
  r = dirty_persist(v->dirty);
  v->touched = calloc(1, v->dirty->bytes);
  v->recent = calloc(1, v->dirty->bytes);
  if (r < 0 || !v->touched || !v->recent) {
    snprintf(err, errcap, "dirty map %s: %s", dirty_path, strerror(r < 0 ? -r : ENOMEM));
    cvol_free(v);
    return r < 0 ? r : -ENOMEM;
  }
  // chunks suspect since the last run (a crash, or a new map) are resent once connected
  v->dropped = dirty_count(v->dirty) > 0;
  pthread_mutex_init(&v->mu, NULL);
  pthread_cond_init(&v->space, NULL);
  pthread_cond_init(&v->work, NULL);
  pthread_cond_init(&v->persist, NULL);
  pthread_cond_init(&v->quiet, NULL);
  int tr = pthread_create(&v->writer, NULL, writer_main, v);
  if (tr == 0 && (tr = pthread_create(&v->persister, NULL, persister_main, v)) != 0) {
    pthread_mutex_lock(&v->mu);
    v->stop = true;
    pthread_cond_broadcast(&v->work);
    pthread_mutex_unlock(&v->mu);
    pthread_join(v->writer, NULL);
  }
  if (tr != 0) {
    v->writer = 0; // nothing left to join
    snprintf(err, errcap, "cannot start the volume's threads: %s", strerror(tr));
    cvol_free(v);
    return -tr;
  }
  *out = v;
  return 0;
}

void cvol_free(cvol *v) {
  if (!v) return;
  if (v->writer) {
    pthread_mutex_lock(&v->mu);
    v->stop = true;
    pthread_cond_broadcast(&v->work);
    pthread_cond_broadcast(&v->persist);
    pthread_cond_broadcast(&v->space);
    pthread_mutex_unlock(&v->mu);
    pthread_join(v->writer, NULL);
    pthread_join(v->persister, NULL);
    pthread_mutex_destroy(&v->mu);
    pthread_cond_destroy(&v->space);
    pthread_cond_destroy(&v->work);
    pthread_cond_destroy(&v->persist);
    pthread_cond_destroy(&v->quiet);
  }
  dirty_free(v->dirty);
  if (v->rfd >= 0) close(v->rfd);
  munmap(v->ring, v->ring_cap);
  free(v->ops);
  free(v->touched);
  free(v->recent);
  free(v);
}
