// The gateway's side of the agents' links: authenticates each agent by its secret before
// reading anything else, then per session a reader verifies every record (checksums,
// sequence, bounds, the agent's fence), appends a batch of them to the journal with one
// system call and acknowledges them accepted; a sender acknowledges them durable once the
// group commit covering them is done and carries the frames TypeScript sends (Opened,
// control, chunk operations, a standby's stream: its records read from the journal by their
// position, cn_gateway_send_stored) and a recovery's chunk copies: chunks of a
// local file (the mirror) read straight into its sealed batch, hashed there, their agent's
// answers taken by the reader (cn_gateway_copy). Frames the data plane does not handle
// (Open, Control, other chunk replies, a standby's acknowledgements) go to TypeScript as events.
#include "journal.h"
#include "listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_LISTENERS 8
#define MAX_SESSION_VOLS 256
#define LINK_MAX_PLAIN (MAX_HASHES_FRAME + FRAME_HEADER + 64)
#define APPEND_BATCH 256
#define F_CHUNK_OP 30
#define F_CHUNK_REPLY 31
/** Copy orders in flight per session, and chunks per order (cn_gateway_copy). */
#define COPY_SLOTS 16
#define COPY_MAX 64
/**
 * The request ids of the chunks the data plane copies: COPY_ID_BASE + serial × 256 + k (the
 * order's serial in its session, the chunk's place in it). TypeScript's own ids count from 1
 * and stay far below; both fit a JSON number exactly (below 2^53).
 */
#define COPY_ID_BASE (1ull << 52)
#define COPY_HEAD_MAX 512
#define COPY_CHUNK_MIN 4096u
#define COPY_CHUNK_MAX (16u * 1024 * 1024)
/** The queued frames a sender batch takes (at least one, whatever its size). */
#define SEND_BATCH (16u * 1024 * 1024)

enum { CHUNK_UNSENT = 0, CHUNK_SENT = 1, CHUNK_SETTLED = 2 };

/** A copy order: chunks of a file to an agent's copy of a volume, sent in order. */
typedef struct {
  bool used;
  uint32_t order;  // the caller's id (the events' aux)
  uint32_t serial; // this session's number for it (in the request ids)
  int fd;          // a duplicate of the caller's descriptor, closed once the order settles
  uint64_t size, chunk;
  char volume[200], kind[8];
  uint32_t n, sent, settled;
  bool advised; // its chunks were asked of the kernel ahead (copy_advise)
  uint32_t idx[COPY_MAX];
  uint8_t state[COPY_MAX];
  uint8_t hash[COPY_MAX][16];
} copy_t;

typedef struct frame_node {
  struct frame_node *next;
  uint64_t len; // the frame's whole length
  /** A record sent by reference (cn_gateway_send_stored): its journal position; bytes hold its frame header. */
  uint64_t stored_pos;
  bool stored;
  uint8_t bytes[];
} frame_node;

typedef struct {
  uint32_t link_id, vol;
  uint64_t size;
  uint64_t durable, acked_durable;
  char name[65];
} svol_t;

typedef struct gsess {
  struct gsess *next;
  cn_gateway *g;
  uint32_t id;
  int fd;
  char agent[129];
  char peer[64];
  sealer_t *tx, *rx;
  pthread_mutex_t wmu; // the socket's writes and the tx sealer
  pthread_mutex_t mu;  // volumes, queue
  pthread_cond_t cv;
  svol_t vols[MAX_SESSION_VOLS];
  uint32_t nvols;
  frame_node *q_head, *q_tail;
  uint64_t q_bytes;
  bool ending, sender_done;
  pthread_t reader, sender;
  batch_reader_t in; // the agent's batches, read after the handshake
  uint8_t *tx_buf;
  size_t tx_cap;
  copy_t copies[COPY_SLOTS];
  uint32_t copy_serial;
} gsess;

typedef struct secret_s {
  struct secret_s *next;
  char agent[129];
  uint8_t bytes[1024];
  uint32_t len;
} secret_t;

typedef struct fence_s {
  struct fence_s *next;
  char agent[129];
  char reason[400];
} fence_t;

struct cn_gateway {
  cn_plane *plane;
  cn_journal *j;
  int handshake_ms;
  pthread_mutex_t mu;
  pthread_cond_t changed;
  listener_t listeners[MAX_LISTENERS];
  int nl;
  secret_t *secrets;
  fence_t *fences;
  gsess *sessions;
  uint32_t next_id;
  int live; // connection threads running
  bool closing, closed;
  // threads of connections that ended, to be joined (a detached thread could still be inside
  // the gateway's mutex when the gateway is freed)
  pthread_t *ended;
  int nended, ended_cap;
};

/** Joins the threads of ended connections (with g->mu held; they no longer take it). */
static void reap(cn_gateway *g) {
  for (int i = 0; i < g->nended; i++) pthread_join(g->ended[i], NULL);
  g->nended = 0;
}

static void glog(cn_gateway *g, int level, const char *msg, const char *k1, const char *v1, const char *k2,
                 const char *v2) {
  if (!plane_logs(g->plane, level)) return;
  char f[900];
  json_t j;
  json_begin(&j, f, sizeof f);
  if (k1) json_str(&j, k1, v1);
  if (k2) json_str(&j, k2, v2);
  plane_log(g->plane, level, "ingest", msg, json_end(&j));
}

static void refuse(cn_gateway *g, const char *reason) {
  plane_post(g->plane, CN_EV_REFUSED, 0, 0, reason, strlen(reason), NULL, 0, false);
}

// ---- sending ----

/** Seals frames laid end to end in `plain` (at buf+4) and writes them; the caller holds wmu. */
static int send_sealed(gsess *s, uint8_t *buf, uint32_t plain) {
  int r = seal_begin(s->tx, buf, plain);
  if (r == 0) r = seal_update(s->tx, buf + 4, buf + 4, plain);
  if (r == 0) r = seal_end(s->tx, buf + 4 + plain);
  if (r == 0) r = write_full(s->fd, buf, 4 + (size_t)plain + seal_tag(s->tx));
  return r;
}

static void ack_frame(uint8_t *b, uint8_t type, uint32_t link_id, uint64_t seq) {
  frame_header(b, type, 12);
  put32(b + FRAME_HEADER, link_id);
  put64(b + FRAME_HEADER + 4, seq);
}

/**
 * Lays at out the durable acknowledgements not sent yet (room for one a volume) and counts them
 * sent; the caller holds s->mu. Returns the bytes laid.
 */
static size_t durable_acks(gsess *s, uint8_t *out) {
  size_t at = 0;
  for (uint32_t i = 0; i < s->nvols; i++) {
    svol_t *v = &s->vols[i];
    if (v->durable > v->acked_durable) {
      ack_frame(out + at, F_DURABLE, v->link_id, v->durable);
      v->acked_durable = v->durable;
      at += FRAME_HEADER + 12;
    }
  }
  return at;
}

/**
 * Asks the kernel to read an order's chunks ahead (POSIX_FADV_WILLNEED, one call a contiguous
 * run): a cold source is then read many requests deep while the sender seals and sends, as
 * parallel readers would have it read. Without s->mu (submitting may wait for the disk's queue);
 * what it reads of the order does not change once the order is made, and an order with chunks
 * unsent stays.
 */
static void copy_advise(const copy_t *c) {
  for (uint32_t k = 0; k < c->n;) {
    uint32_t e = k + 1;
    while (e < c->n && c->idx[e] == c->idx[e - 1] + 1) e++;
    uint64_t off = (uint64_t)c->idx[k] * c->chunk;
    uint64_t end = MIN((uint64_t)c->idx[e - 1] * c->chunk + c->chunk, c->size);
    posix_fadvise(c->fd, (off_t)off, (off_t)(end - off), POSIX_FADV_WILLNEED);
    k = e;
  }
}

/** The order that follows c (the next serial) not yet read ahead, if any. */
static copy_t *copy_after(gsess *s, const copy_t *c) {
  copy_t *best = NULL;
  for (int i = 0; i < COPY_SLOTS; i++) {
    copy_t *o = &s->copies[i];
    if (!o->used || o->advised || (int32_t)(o->serial - c->serial) <= 0) continue;
    if (!best || (int32_t)(o->serial - best->serial) < 0) best = o;
  }
  return best;
}

/** The copy order whose next chunk goes out first (the oldest with one unsent); NULL when none or ending. */
static copy_t *next_copy(gsess *s) {
  if (s->ending) return NULL;
  copy_t *best = NULL;
  for (int i = 0; i < COPY_SLOTS; i++) {
    copy_t *c = &s->copies[i];
    if (c->used && c->sent < c->n && (!best || (int32_t)(c->serial - best->serial) < 0)) best = c;
  }
  return best;
}

/** Closes a settled copy order's slot (with s->mu held). */
static void copy_release(copy_t *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  c->used = false;
}

/** A chunk of an order settles (with s->mu held); the order's slot closes with its last. */
static void copy_settle(copy_t *c, uint32_t k) {
  c->state[k] = CHUNK_SETTLED;
  if (++c->settled == c->n) copy_release(c);
}

/** A chunk's outcome to TypeScript: [u32 index][i32 0, 1 refused by the agent, or -errno][16 hash][reason]. */
static void copy_post(gsess *s, uint32_t order, uint32_t index, int32_t status, const uint8_t *hash,
                      const char *reason) {
  uint8_t b[24];
  put32(b, index);
  put32(b + 4, (uint32_t)status);
  if (hash) memcpy(b + 8, hash, 16);
  else memset(b + 8, 0, 16);
  plane_post(s->g->plane, CN_EV_COPIED, s->id, order, b, sizeof b, reason, reason ? strlen(reason) : 0, true);
}

/** What the sender takes of a copy order for one chunk (a snapshot: it reads outside the lock). */
typedef struct {
  copy_t *c, *advise[2]; // orders to read ahead (copy_advise), or NULL
  uint32_t k, index, serial, order;
  int fd;
  uint64_t off, len;
  char volume[200], kind[8];
  uint64_t chunk;
} copy_job;

static void copy_claim(gsess *s, copy_t *c, copy_job *j) {
  // this order's chunks and the next order's are read ahead, so the disk always has work queued
  j->advise[0] = c->advised ? NULL : c;
  c->advised = true;
  j->advise[1] = copy_after(s, c);
  if (j->advise[1]) j->advise[1]->advised = true;
  j->c = c;
  j->k = c->sent++;
  c->state[j->k] = CHUNK_SENT;
  j->index = c->idx[j->k];
  j->serial = c->serial;
  j->order = c->order;
  j->fd = c->fd;
  j->chunk = c->chunk;
  j->off = (uint64_t)j->index * c->chunk;
  j->len = MIN(c->chunk, c->size - j->off);
  memcpy(j->volume, c->volume, sizeof j->volume);
  memcpy(j->kind, c->kind, sizeof j->kind);
}

/**
 * Lays the chunk's ChunkOp "write" frame at out: its head, then the chunk read from the file
 * straight after it, hashed there. Returns the frame's length, or -errno when the read failed.
 */
static int64_t copy_frame(const copy_job *j, uint8_t *out, uint8_t hash[16]) {
  char *json = (char *)out + FRAME_HEADER + 4;
  json_t js;
  json_begin(&js, json, COPY_HEAD_MAX - FRAME_HEADER - 4);
  json_str(&js, "op", "write");
  json_str(&js, "volume", j->volume);
  json_str(&js, "kind", j->kind);
  json_uint(&js, "chunkSize", j->chunk);
  json_uint(&js, "index", j->index);
  json_uint(&js, "id", COPY_ID_BASE + (uint64_t)j->serial * 256 + j->k);
  uint32_t jl = (uint32_t)strlen(json_end(&js));
  uint8_t *data = out + FRAME_HEADER + 4 + jl;
  int64_t r = io_pread(j->fd, data, j->len, j->off);
  if (r < 0) return r;
  if ((uint64_t)r < j->len) memset(data + r, 0, j->len - (uint64_t)r); // past the file's end: zeroes
  hash128(data, j->len, hash);
  frame_header(out, F_CHUNK_OP, 4 + jl + (uint32_t)j->len);
  put32(out + FRAME_HEADER, jl);
  return (int64_t)(FRAME_HEADER + 4 + jl + j->len);
}

/**
 * Lays the taken frames end to end at out; a record sent by reference is read from the journal
 * there. Returns the bytes laid, or -ESTALE when such a record is gone (overwritten since its
 * header was read: its reader was optional and fell behind), -EIO when unreadable.
 */
static int64_t lay_frames(gsess *s, const frame_node *f, uint8_t *out) {
  uint64_t at = 0;
  for (; f; f = f->next) {
    if (!f->stored) {
      memcpy(out + at, f->bytes, f->len);
    } else {
      memcpy(out + at, f->bytes, FRAME_HEADER);
      int64_t r = journal_copy_record(s->g->j, f->stored_pos, f->len - FRAME_HEADER, out + at + FRAME_HEADER);
      if (r < 0) return r;
    }
    at += f->len;
  }
  return (int64_t)at;
}

static void *sender_main(void *arg) {
  thread_name("cn-gw-ack");
  gsess *s = arg;
  uint8_t acks[MAX_SESSION_VOLS * (FRAME_HEADER + 12)];
  pthread_mutex_lock(&s->mu);
  for (;;) {
    bool durable = false;
    for (uint32_t i = 0; i < s->nvols && !durable; i++) durable = s->vols[i].durable > s->vols[i].acked_durable;
    copy_t *copy = next_copy(s);
    if (!s->q_head && !durable && !copy) {
      if (s->ending) break;
      pthread_cond_wait(&s->cv, &s->mu);
      continue;
    }
    // one batch: queued frames in order (up to SEND_BATCH), the durable acknowledgements, then
    // at most one copied chunk; the frames are laid out of the lock (a stored record is read
    // from the disk, and TypeScript queues more meanwhile)
    frame_node *take = s->q_head, *last = NULL;
    uint64_t plain = 0;
    for (frame_node *f = take; f; f = f->next) {
      if (last && plain + f->len > SEND_BATCH) break;
      plain += f->len;
      last = f;
    }
    if (last) {
      s->q_head = last->next;
      if (!s->q_head) s->q_tail = NULL;
      last->next = NULL;
      s->q_bytes -= plain;
    }
    size_t nacks = durable_acks(s, acks);
    // a batch stays within what the agent reads (a large frame alone goes first)
    if (copy && plain + nacks + COPY_HEAD_MAX + COPY_CHUNK_MAX > LINK_MAX_PLAIN) copy = NULL;
    size_t need = 4 + SEAL_TAG + plain + nacks;
    copy_job job;
    if (copy) {
      copy_claim(s, copy, &job);
      need += COPY_HEAD_MAX + job.len;
    }
    if (need > s->tx_cap) {
      uint8_t *b = realloc(s->tx_buf, need);
      if (!b) break;
      s->tx_buf = b;
      s->tx_cap = need;
    }
    pthread_mutex_unlock(&s->mu);
    // a stream paced by the queue (a standby's feeder) waits for this, not on a clock
    if (take) plane_flag(s->g->plane, CN_FL_SENT);
    int64_t laid = lay_frames(s, take, s->tx_buf + 4);
    while (take) {
      frame_node *f = take;
      take = f->next;
      free(f);
    }
    if (laid < 0) {
      // what follows a lost record may not be sent: the session ends, and the feeder finds its
      // place lost when the agent is back (its copies are resynchronised)
      glog(s->g, LOG_WARN, "a record of the stream is gone from the journal: the link restarts", "agent", s->agent,
           "error", laid == -ESTALE ? "overwritten since its header was read, or corrupt" : strerror((int)-laid));
      pthread_mutex_lock(&s->mu);
      if (copy) copy_settle(copy, job.k); // not sent: the session's end says so
      s->ending = true;
      shutdown(s->fd, SHUT_RDWR);
      break;
    }
    size_t at = 4 + (size_t)laid;
    memcpy(s->tx_buf + at, acks, nacks);
    at += nacks;
    if (copy) {
      for (int i = 0; i < 2; i++) {
        if (job.advise[i]) copy_advise(job.advise[i]);
      }
      uint8_t hash[16];
      int64_t fl = copy_frame(&job, s->tx_buf + at, hash);
      pthread_mutex_lock(&s->mu);
      if (fl < 0) {
        // unreadable: the chunk settles failed and is not sent
        copy_settle(copy, job.k);
      } else {
        memcpy(copy->hash[job.k], hash, 16); // before it is sent: the answer may come at once
        at += (size_t)fl;
      }
      pthread_mutex_unlock(&s->mu);
      if (fl < 0) {
        char why[160];
        snprintf(why, sizeof why, "reading chunk %u of the source: %s", job.index, strerror((int)-fl));
        copy_post(s, job.order, job.index, (int32_t)fl, NULL, why);
      }
    }
    int r = 0;
    if (at > 4) {
      pthread_mutex_lock(&s->wmu);
      r = send_sealed(s, s->tx_buf, (uint32_t)(at - 4));
      pthread_mutex_unlock(&s->wmu);
    }
    pthread_mutex_lock(&s->mu);
    if (r < 0) {
      s->ending = true;
      shutdown(s->fd, SHUT_RDWR);
    }
  }
  s->sender_done = true;
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/**
 * An agent's answer to a chunk this session copied: the chunk settles and TypeScript hears of
 * it. False when the answer is to one of TypeScript's own requests.
 */
static bool copy_reply(gsess *s, const uint8_t *body, uint32_t len) {
  if (len < 4) return false;
  uint32_t jl = get32(body);
  if (jl > len - 4) return false;
  const char *json = (const char *)body + 4;
  double id;
  if (!json_get_num(json, jl, "id", &id) || id < (double)COPY_ID_BASE || id > 9007199254740991.0) return false;
  uint64_t rel = (uint64_t)id - COPY_ID_BASE;
  uint32_t serial = (uint32_t)(rel >> 8), k = (uint32_t)(rel & 255);
  bool ok = false;
  json_get_bool(json, jl, "ok", &ok);
  char error[300] = "";
  if (!ok && !json_get_str(json, jl, "error", error, sizeof error)) snprintf(error, sizeof error, "failed");
  uint32_t order = 0, index = 0;
  uint8_t hash[16];
  bool found = false;
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < COPY_SLOTS && !found; i++) {
    copy_t *c = &s->copies[i];
    if (!c->used || c->serial != serial || k >= c->n || c->state[k] != CHUNK_SENT) continue;
    found = true;
    order = c->order;
    index = c->idx[k];
    memcpy(hash, c->hash[k], 16);
    copy_settle(c, k);
  }
  pthread_mutex_unlock(&s->mu);
  // an answer to no chunk in flight (a duplicate) is dropped
  if (found) copy_post(s, order, index, ok ? 0 : 1, hash, ok ? NULL : error);
  return true;
}

static void queue_frame(gsess *s, frame_node *f) {
  f->next = NULL;
  s->q_bytes += f->len;
  if (s->q_tail) s->q_tail->next = f;
  else s->q_head = f;
  s->q_tail = f;
  pthread_cond_signal(&s->cv);
}

static frame_node *new_frame(uint8_t type, const void *body, size_t len) {
  frame_node *f = malloc(sizeof *f + FRAME_HEADER + len);
  if (!f) return NULL;
  f->len = FRAME_HEADER + len;
  f->stored = false;
  frame_header(f->bytes, type, (uint32_t)len);
  memcpy(f->bytes + FRAME_HEADER, body, len);
  return f;
}

/** The reader's own small frames (an error), sealed and written at once. */
static void send_now(gsess *s, uint8_t type, const void *body, size_t len) {
  uint8_t buf[4 + FRAME_HEADER + 512 + SEAL_TAG];
  len = MIN(len, (size_t)512);
  frame_header(buf + 4, type, (uint32_t)len);
  memcpy(buf + 4 + FRAME_HEADER, body, len);
  pthread_mutex_lock(&s->wmu);
  send_sealed(s, buf, (uint32_t)(FRAME_HEADER + len));
  pthread_mutex_unlock(&s->wmu);
}

// ---- the durable acknowledgements, from the journal's committer ----

static void on_durable(void *ctx, const uint32_t *vols, const uint64_t *seqs, uint32_t n) {
  cn_gateway *g = ctx;
  pthread_mutex_lock(&g->mu);
  for (gsess *s = g->sessions; s; s = s->next) {
    pthread_mutex_lock(&s->mu);
    bool any = false;
    for (uint32_t i = 0; i < s->nvols; i++) {
      for (uint32_t k = 0; k < n; k++) {
        if (s->vols[i].vol == vols[k] && seqs[k] > s->vols[i].durable) {
          s->vols[i].durable = seqs[k];
          any = true;
        }
      }
    }
    if (any) pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
  }
  pthread_mutex_unlock(&g->mu);
}

// ---- authentication ----


static bool printable(const char *s) {
  for (; *s; s++) {
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return false;
  }
  return true;
}

/** Returns true once the agent proved itself (s->agent, s->tx, s->rx set). */
static bool authenticate(gsess *s) {
  cn_gateway *g = s->g;
  uint8_t challenge[FRAME_HEADER + 2 + LINK_NONCE], gw_nonce[LINK_NONCE];
  random_bytes(gw_nonce, sizeof gw_nonce);
  frame_header(challenge, F_CHALLENGE, 2 + LINK_NONCE);
  put16(challenge + FRAME_HEADER, LINK_VERSION);
  memcpy(challenge + FRAME_HEADER + 2, gw_nonce, LINK_NONCE);
  if (write_full(s->fd, challenge, sizeof challenge) < 0) return false;
  uint8_t body[1100], type;
  uint32_t len;
  sock_timeout(s->fd, g->handshake_ms);
  int r = read_small_frame(s->fd, &type, body, sizeof body, &len);
  sock_timeout(s->fd, 0);
  if (r < 0) {
    if (r == -EAGAIN || r == -EWOULDBLOCK) {
      refuse(g, "handshake timeout");
      glog(g, LOG_WARN, "agent handshake timed out", "peer", s->peer, NULL, NULL);
    }
    return false;
  }
  if (type != F_HELLO) {
    refuse(g, "no hello");
    char t[8];
    snprintf(t, sizeof t, "%u", type);
    glog(g, LOG_WARN, "agent refused: expected a hello frame", "peer", s->peer, "frame", t);
    return false;
  }
  char name[129] = "";
  const uint8_t *agent_nonce = NULL, *proof = NULL;
  bool ok = len >= 3 && get16(body) == LINK_VERSION;
  if (ok) {
    uint8_t nl = body[2];
    ok = nl >= 1 && nl <= 128 && len == 3u + nl + LINK_NONCE + LINK_PROOF;
    if (ok) {
      memcpy(name, body + 3, nl);
      name[nl] = 0;
      ok = strlen(name) == nl && printable(name);
      agent_nonce = body + 3 + nl;
      proof = agent_nonce + LINK_NONCE;
    }
  }
  uint8_t secret[1024];
  uint32_t slen = 0;
  if (ok) {
    pthread_mutex_lock(&g->mu);
    for (secret_t *x = g->secrets; x; x = x->next) {
      if (strcmp(x->agent, name) == 0) {
        memcpy(secret, x->bytes, x->len);
        slen = x->len;
      }
    }
    pthread_mutex_unlock(&g->mu);
  }
  uint8_t want[LINK_PROOF];
  if (slen) link_proof(secret, slen, true, name, gw_nonce, agent_nonce, want);
  if (!ok || !slen || !same_bytes(proof, want, LINK_PROOF)) {
    refuse(g, "authentication failed");
    // the peer and the claimed name are logged; never a secret or a proof
    if (plane_logs(g->plane, LOG_WARN)) {
      char f[400];
      json_t j;
      json_begin(&j, f, sizeof f);
      json_str(&j, "peer", s->peer);
      json_str(&j, "claimedAgent", ok ? name : "(invalid)");
      json_bool(&j, "knownAgent", slen > 0);
      plane_log(g->plane, LOG_WARN, "ingest", "agent refused: authentication failed", json_end(&j));
    }
    static const char reason[] = "authentication failed";
    uint8_t denied[FRAME_HEADER + sizeof reason];
    frame_header(denied, F_DENIED, sizeof reason - 1);
    memcpy(denied + FRAME_HEADER, reason, sizeof reason - 1);
    write_full(s->fd, denied, FRAME_HEADER + sizeof reason - 1);
    memset(secret, 0, sizeof secret);
    return false;
  }
  uint8_t welcome[FRAME_HEADER + LINK_PROOF], k[32];
  frame_header(welcome, F_WELCOME, LINK_PROOF);
  link_proof(secret, slen, false, name, gw_nonce, agent_nonce, welcome + FRAME_HEADER);
  link_key(secret, slen, true, name, gw_nonce, agent_nonce, k);
  bool plain = sock_is_unix(s->fd);
  s->rx = sealer_new(k, false, plain);
  link_key(secret, slen, false, name, gw_nonce, agent_nonce, k);
  s->tx = sealer_new(k, true, plain);
  memset(k, 0, sizeof k);
  memset(secret, 0, sizeof secret);
  if (!s->rx || !s->tx || write_full(s->fd, welcome, sizeof welcome) < 0) return false;
  snprintf(s->agent, sizeof s->agent, "%s", name);
  return true;
}

// ---- records ----

typedef struct {
  uint8_t *recs[APPEND_BATCH];
  uint32_t lens[APPEND_BATCH], vols[APPEND_BATCH];
  rec_t h[APPEND_BATCH];
  uint32_t n;
  // per link id: the last sequence number of this batch, for the acknowledgements
  uint32_t acked_link[MAX_SESSION_VOLS];
  uint64_t acked_seq[MAX_SESSION_VOLS];
  uint32_t nacked;
  // per link id: the sequence the next record must carry
  uint32_t exp_link[MAX_SESSION_VOLS];
  uint64_t exp_seq[MAX_SESSION_VOLS];
  uint32_t nexp;
  bool barrier; // a FLUSH or FUA record is in this sealed batch
} batch_t;

/** Bytes waiting, read ahead or on the session's socket (0 when none, or unknown). */
static size_t pending_input(gsess *s) {
  int n = 0;
  return batch_buffered(&s->in) + (ioctl(s->fd, FIONREAD, &n) == 0 ? (size_t)n : 0);
}

/**
 * Appends the records gathered so far and acknowledges them accepted. With `last` (the end of
 * a sealed batch) a barrier the agent waits for is committed here when nothing else is to be
 * read, and its durable acknowledgement goes out with the accepted ones, in one write.
 */
static int flush_records(gsess *s, batch_t *b, bool last, char *why, size_t cap) {
  if (b->n > 0) {
    int r = journal_append(s->g->j, b->recs, b->lens, b->vols, b->h, b->n, NULL, false);
    if (r < 0) {
      snprintf(why, cap, "the journal refused records: %s", strerror(-r));
      return -1;
    }
    b->n = 0;
  }
  bool durable = false;
  if (last && b->barrier && pending_input(s) == 0) durable = journal_commit_inline(s->g->j);
  if (last) b->barrier = false;
  if (b->nacked > 0 || durable) {
    uint8_t buf[4 + 2 * MAX_SESSION_VOLS * (FRAME_HEADER + 12) + SEAL_TAG];
    size_t at = 4;
    for (uint32_t i = 0; i < b->nacked; i++) {
      ack_frame(buf + at, F_ACCEPTED, b->acked_link[i], b->acked_seq[i]);
      at += FRAME_HEADER + 12;
    }
    b->nacked = 0;
    pthread_mutex_lock(&s->wmu);
    if (durable) {
      // what the commit made durable for this session, unless the sender thread took it already
      pthread_mutex_lock(&s->mu);
      at += durable_acks(s, buf + at);
      pthread_mutex_unlock(&s->mu);
    }
    int r = send_sealed(s, buf, (uint32_t)(at - 4));
    pthread_mutex_unlock(&s->wmu);
    if (r < 0) {
      snprintf(why, cap, "%s", strerror(-r));
      return -1;
    }
  }
  return 0;
}

static const char *fence_of(cn_gateway *g, const char *agent, char *out, size_t cap) {
  const char *r = NULL;
  pthread_mutex_lock(&g->mu);
  for (fence_t *f = g->fences; f; f = f->next) {
    if (strcmp(f->agent, agent) == 0) {
      snprintf(out, cap, "%s", f->reason);
      r = out;
    }
  }
  pthread_mutex_unlock(&g->mu);
  return r;
}

/** Verifies one record frame and adds it to the batch; -1 with why set when the stream is corrupt. */
static int take_record(gsess *s, batch_t *b, uint8_t *body, uint32_t len, const char *fence, char *why, size_t cap) {
  if (fence) {
    snprintf(why, cap, "agent %s is fenced (%s): its writes are refused", s->agent, fence);
    return -1;
  }
  rec_t h;
  const char *bad = rec_decode(body, len, MAX_PAYLOAD, &h);
  if (bad) {
    snprintf(why, cap, "%s", bad);
    return -1;
  }
  svol_t v;
  bool found = false;
  pthread_mutex_lock(&s->mu);
  for (uint32_t i = 0; i < s->nvols && !found; i++) {
    if (s->vols[i].link_id == h.volume) {
      v = s->vols[i];
      found = true;
    }
  }
  pthread_mutex_unlock(&s->mu);
  if (!found) {
    snprintf(why, cap, "record for volume %u, which this connection did not open", h.volume);
    return -1;
  }
  if (!rec_payload_ok(body, len, &h)) {
    snprintf(why, cap, "record %llu of %s: payload checksum mismatch", (unsigned long long)h.seq, v.name);
    return -1;
  }
  if (h.kind == K_WRAP || rec_between(&h)) {
    snprintf(why, cap, "%s records do not travel from an agent", h.kind == K_WRAP ? "wrap" : "synchronisation");
    return -1;
  }
  uint32_t e = 0;
  while (e < b->nexp && b->exp_link[e] != h.volume) e++;
  if (e == b->nexp) {
    uint64_t size, last, durable;
    journal_volume(s->g->j, v.vol, &size, &last, &durable);
    b->exp_link[e] = h.volume;
    b->exp_seq[e] = last + 1;
    b->nexp++;
  }
  if (h.seq != b->exp_seq[e]) {
    snprintf(why, cap, "record %llu of %s out of sequence (expected %llu)", (unsigned long long)h.seq, v.name,
             (unsigned long long)b->exp_seq[e]);
    return -1;
  }
  if (h.kind != K_FLUSH && (h.offset > v.size || h.length > v.size - h.offset)) {
    snprintf(why, cap, "record %llu of %s reaches past the end of the volume", (unsigned long long)h.seq, v.name);
    return -1;
  }
  b->exp_seq[e]++;
  b->recs[b->n] = body;
  b->lens[b->n] = len;
  b->vols[b->n] = v.vol;
  b->h[b->n] = h;
  b->n++;
  uint32_t a = 0;
  while (a < b->nacked && b->acked_link[a] != h.volume) a++;
  if (a == b->nacked) b->nacked++;
  b->acked_link[a] = h.volume;
  b->acked_seq[a] = h.seq;
  if (h.kind == K_FLUSH || (h.flags & RF_FUA)) b->barrier = true;
  return b->n == APPEND_BATCH ? flush_records(s, b, false, why, cap) : 0;
}

static bool passes(uint8_t type) {
  // the agent's Open and control; a recovery's chunk replies; a standby's acknowledgements, hashes, pongs
  return type == F_OPEN || type == F_CONTROL || type == F_CHUNK_REPLY || type == F_ACCEPTED || type == 23 || type == 26;
}

static uint32_t frame_limit(uint8_t type) {
  if (type == F_RECORD || type == F_CHUNK_REPLY) return MAX_FRAME;
  if (type == 23) return MAX_HASHES_FRAME;
  return MAX_CONTROL_FRAME;
}

static void serve(gsess *s, char *why, size_t cap) {
  cn_gateway *g = s->g;
  batch_t *b = calloc(1, sizeof *b);
  if (!b || batch_reader_init(&s->in, s->fd) < 0) {
    snprintf(why, cap, "out of memory for a session");
    free(b);
    return;
  }
  for (;;) {
    uint8_t lp[4], *data;
    uint32_t n;
    int r = batch_next(&s->in, LINK_MAX_PLAIN, seal_tag(s->rx), lp, &data, &n);
    if (r <= 0) {
      if (r == -EMSGSIZE) snprintf(why, cap, "a batch of %u bytes is over the limit", get32(lp));
      else if (r == -EPIPE) snprintf(why, cap, "the agent closed the connection inside a batch");
      else if (r < 0) snprintf(why, cap, "%s", strerror(-r));
      break;
    }
    if (unseal(s->rx, lp, data, n) < 0) {
      snprintf(why, cap, "a batch failed authentication (altered, replayed or reordered)");
      glog(g, LOG_WARN, "agent connection dropped", "agent", s->agent, "error", why);
      static const char m[] = "{\"message\":\"a batch failed authentication\"}";
      send_now(s, F_ERROR, m, sizeof m - 1);
      break;
    }
    char fence_buf[400];
    const char *fence = fence_of(g, s->agent, fence_buf, sizeof fence_buf);
    b->nexp = 0; // the journal holds the previous batch: its sequence numbers are current
    size_t at = 0;
    int bad = 0;
    while (at < n && !bad) {
      uint8_t *f = data + at;
      if (n - at < FRAME_HEADER) {
        snprintf(why, cap, "stream ended inside a frame header");
        bad = 1;
        break;
      }
      uint32_t fl = get32(f);
      uint8_t type = f[4];
      if (fl < 1 || fl > frame_limit(type) || fl - 1 > n - at - FRAME_HEADER) {
        snprintf(why, cap, fl < 1 ? "empty frame" : "frame of %u bytes exceeds its limit or its batch", fl);
        bad = 1;
        break;
      }
      uint8_t *body = f + FRAME_HEADER;
      uint32_t blen = fl - 1;
      at += FRAME_HEADER + blen;
      if (type == F_RECORD) {
        if (take_record(s, b, body, blen, fence, why, cap) < 0) bad = 1;
        continue;
      }
      // what follows a record is handled after it
      if (flush_records(s, b, false, why, cap) < 0) {
        bad = 2;
        break;
      }
      if (type == F_CHUNK_REPLY && copy_reply(s, body, blen)) continue;
      if (!passes(type)) {
        snprintf(why, cap, "unexpected frame type %u from agent", type);
        bad = 1;
        break;
      }
      plane_post(g->plane, CN_EV_FRAME, s->id, type, body, blen, NULL, 0, true);
    }
    // the records before a bad frame are taken: a stream is valid up to its first fault
    if (bad != 2) {
      char why2[700];
      if (flush_records(s, b, !bad, why2, sizeof why2) < 0) {
        if (!bad) snprintf(why, cap, "%s", why2);
        bad = 2;
      }
    }
    if (bad) {
      // a corrupt stream: the agent is told why and reconnects (it resends what is not durable)
      glog(g, LOG_WARN, "agent connection dropped", "agent", s->agent, "error", why);
      char msg[700];
      json_t j;
      json_begin(&j, msg, sizeof msg);
      json_str(&j, "message", why);
      if (bad == 1) send_now(s, F_ERROR, msg, strlen(json_end(&j)));
      break;
    }
  }
  free(b);
}

// ---- connections ----

static void end_session(gsess *s) {
  pthread_mutex_lock(&s->mu);
  s->ending = true;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void *conn_main(void *arg) {
  thread_name("cn-gw-session");
  gsess *s = arg;
  cn_gateway *g = s->g;
  char why[700] = "";
  bool authed = authenticate(s);
  if (authed) {
    pthread_mutex_lock(&g->mu);
    if (g->closing) authed = false;
    for (gsess *o = g->sessions; o && authed; o = o->next) {
      if (o != s && strcmp(o->agent, s->agent) == 0 && !o->ending) {
        glog(g, LOG_INFO, "agent reconnected; closing its previous connection", "agent", s->agent, NULL, NULL);
        shutdown(o->fd, SHUT_RDWR);
      }
    }
    pthread_mutex_unlock(&g->mu);
  }
  int tr = authed ? pthread_create(&s->sender, NULL, sender_main, s) : 0;
  if (tr != 0) {
    glog(g, LOG_ERROR, "agent connection dropped: no thread for its acknowledgements", "agent", s->agent, "error",
         strerror(tr));
    authed = false;
  }
  if (authed) {
    char ev[300];
    json_t j;
    json_begin(&j, ev, sizeof ev);
    json_str(&j, "agent", s->agent);
    json_str(&j, "peer", s->peer);
    json_end(&j);
    glog(g, LOG_INFO, "agent connected", "agent", s->agent, "peer", s->peer);
    plane_post(g->plane, CN_EV_SESSION, s->id, 1, ev, strlen(ev), NULL, 0, true);
    serve(s, why, sizeof why);
    end_session(s);
    pthread_join(s->sender, NULL);
  }
  shutdown(s->fd, SHUT_RDWR);
  close(s->fd);
  pthread_mutex_lock(&g->mu);
  for (gsess **p = &g->sessions; *p; p = &(*p)->next) {
    if (*p == s) {
      *p = s->next;
      break;
    }
  }
  pthread_mutex_unlock(&g->mu);
  if (authed) {
    char ev[900];
    json_t j;
    json_begin(&j, ev, sizeof ev);
    json_str(&j, "agent", s->agent);
    json_str(&j, "reason", why);
    json_end(&j);
    plane_post(g->plane, CN_EV_SESSION, s->id, 0, ev, strlen(ev), NULL, 0, true);
  }
  while (s->q_head) {
    frame_node *f = s->q_head;
    s->q_head = f->next;
    free(f);
  }
  // copy orders still in flight end with the session (TypeScript fails them on its end event)
  for (int i = 0; i < COPY_SLOTS; i++) {
    if (s->copies[i].used) copy_release(&s->copies[i]);
  }
  sealer_free(s->tx);
  sealer_free(s->rx);
  batch_reader_free(&s->in);
  free(s->tx_buf);
  pthread_mutex_destroy(&s->mu);
  pthread_mutex_destroy(&s->wmu);
  pthread_cond_destroy(&s->cv);
  free(s);
  pthread_mutex_lock(&g->mu);
  g->live--;
  if (g->nended == g->ended_cap) {
    int cap = g->ended_cap ? g->ended_cap * 2 : 16;
    pthread_t *n = realloc(g->ended, sizeof(pthread_t) * (size_t)cap);
    if (n) {
      g->ended = n;
      g->ended_cap = cap;
    }
  }
  if (g->nended < g->ended_cap) g->ended[g->nended++] = pthread_self();
  else pthread_detach(pthread_self());
  pthread_cond_broadcast(&g->changed);
  pthread_mutex_unlock(&g->mu);
  return NULL;
}


static bool gateway_closing(void *owner) {
  cn_gateway *g = owner;
  pthread_mutex_lock(&g->mu);
  bool closing = g->closing;
  pthread_mutex_unlock(&g->mu);
  return closing;
}

/** A new agent connection: its session thread authenticates it, then serves it. */
static void gateway_accepted(void *owner, int fd) {
  cn_gateway *g = owner;
  gsess *s = calloc(1, sizeof *s);
  if (!s) {
    close(fd);
    return;
  }
  s->g = g;
  s->fd = fd;
  sock_peer(fd, s->peer, sizeof s->peer);
  pthread_mutex_init(&s->mu, NULL);
  pthread_mutex_init(&s->wmu, NULL);
  pthread_cond_init(&s->cv, NULL);
  pthread_mutex_lock(&g->mu);
  reap(g);
  if (!g->closing) {
    s->id = ++g->next_id;
    s->next = g->sessions;
    g->sessions = s;
    g->live++;
    pthread_t t;
    if (pthread_create(&t, NULL, conn_main, s) == 0) {
      pthread_mutex_unlock(&g->mu);
      return;
    }
    g->sessions = s->next;
    g->live--;
  }
  pthread_mutex_unlock(&g->mu);
  close(fd);
  free(s);
}

// ---- API ----

EXPORT cn_gateway *cn_gateway_new(cn_plane *p, cn_journal *j, int32_t handshake_timeout_ms) {
  cn_gateway *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->plane = p;
  g->j = j;
  g->handshake_ms = handshake_timeout_ms > 0 ? handshake_timeout_ms : 10000;
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->changed, NULL);
  journal_on_durable(j, on_durable, g);
  return g;
}

EXPORT int32_t cn_gateway_listen(cn_gateway *g, const char *text, int32_t *port, char *err, uint64_t errcap) {
  if (g->nl == MAX_LISTENERS) {
    snprintf(err, errcap, "at most %d listeners", MAX_LISTENERS);
    return -ENOSPC;
  }
  int r = listener_start(&g->listeners[g->nl], text, "cn-gw-accept", gateway_accepted, gateway_closing, g, g->plane,
                         "ingest", port, err, errcap);
  if (r == 0) g->nl++;
  return r;
}

EXPORT void cn_gateway_secret(cn_gateway *g, const char *agent, const uint8_t *secret, uint32_t len) {
  pthread_mutex_lock(&g->mu);
  if (g->closed) {
    pthread_mutex_unlock(&g->mu);
    return;
  }
  for (secret_t **p = &g->secrets; *p; p = &(*p)->next) {
    if (strcmp((*p)->agent, agent) == 0) {
      secret_t *x = *p;
      *p = x->next;
      memset(x, 0, sizeof *x);
      free(x);
      break;
    }
  }
  if (len > 0 && len <= 1024 && strlen(agent) <= 128) {
    secret_t *x = calloc(1, sizeof *x);
    if (x) {
      snprintf(x->agent, sizeof x->agent, "%s", agent);
      memcpy(x->bytes, secret, len);
      x->len = len;
      x->next = g->secrets;
      g->secrets = x;
    }
  }
  pthread_mutex_unlock(&g->mu);
}

static gsess *session(cn_gateway *g, uint32_t id) {
  for (gsess *s = g->sessions; s; s = s->next) {
    if (s->id == id && !s->ending && s->tx) return s;
  }
  return NULL;
}

EXPORT int32_t cn_gateway_open_volume(cn_gateway *g, uint32_t sid, uint32_t link_id, uint32_t volume_id,
                                      uint64_t size, int32_t known, const char *name) {
  uint64_t vsize, last, durable;
  if (!journal_volume(g->j, volume_id, &vsize, &last, &durable)) return -ENOENT;
  pthread_mutex_lock(&g->mu);
  gsess *s = session(g, sid);
  if (!s) {
    pthread_mutex_unlock(&g->mu);
    return -ENOTCONN;
  }
  pthread_mutex_lock(&s->mu);
  svol_t *v = NULL;
  for (uint32_t i = 0; i < s->nvols; i++) {
    if (s->vols[i].link_id == link_id) v = &s->vols[i];
  }
  if (!v && s->nvols < MAX_SESSION_VOLS) v = &s->vols[s->nvols++];
  int r = 0;
  if (!v) r = -ENOSPC;
  else {
    *v = (svol_t){.link_id = link_id, .vol = volume_id, .size = size, .durable = durable, .acked_durable = durable};
    snprintf(v->name, sizeof v->name, "%s", name);
    char body[200];
    json_t j;
    json_begin(&j, body, sizeof body);
    json_uint(&j, "id", link_id);
    json_uint(&j, "lastSeq", last);
    json_bool(&j, "known", known != 0);
    json_uint(&j, "journalId", volume_id);
    json_end(&j);
    frame_node *f = new_frame(F_OPENED, body, strlen(body));
    if (f) queue_frame(s, f);
    // what the journal already holds is acknowledged again: the acknowledgements of records that
    // arrived just before a previous connection dropped went nowhere
    if (known && last > 0) {
      uint8_t ack[12];
      put32(ack, link_id);
      put64(ack + 4, last);
      if ((f = new_frame(F_ACCEPTED, ack, 12))) queue_frame(s, f);
    }
    if (known && durable > 0) {
      uint8_t ack[12];
      put32(ack, link_id);
      put64(ack + 4, durable);
      if ((f = new_frame(F_DURABLE, ack, 12))) queue_frame(s, f);
    }
  }
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_unlock(&g->mu);
  return r;
}

/** Queues a frame for a session; -ENOTCONN (and the frame freed) when the session is gone. */
static int32_t enqueue(cn_gateway *g, uint32_t sid, frame_node *f) {
  pthread_mutex_lock(&g->mu);
  gsess *s = session(g, sid);
  if (!s) {
    pthread_mutex_unlock(&g->mu);
    free(f);
    return -ENOTCONN;
  }
  pthread_mutex_lock(&s->mu);
  queue_frame(s, f);
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_unlock(&g->mu);
  return 0;
}

EXPORT int32_t cn_gateway_send(cn_gateway *g, uint32_t sid, const uint8_t *frame, uint64_t len, const uint8_t *body,
                               uint64_t blen) {
  uint64_t total = len + blen;
  if (len < FRAME_HEADER || get32(frame) != total - 4 || total > LINK_MAX_PLAIN) return -EINVAL;
  frame_node *f = malloc(sizeof *f + total);
  if (!f) return -ENOMEM;
  f->len = total;
  f->stored = false;
  memcpy(f->bytes, frame, len);
  if (blen) memcpy(f->bytes + len, body, blen);
  return enqueue(g, sid, f);
}

EXPORT int32_t cn_gateway_send_stored(cn_gateway *g, uint32_t sid, uint64_t pos, uint64_t len) {
  if (len < REC_HEADER || len > REC_HEADER + MAX_PAYLOAD) return -EINVAL;
  frame_node *f = malloc(sizeof *f + FRAME_HEADER);
  if (!f) return -ENOMEM;
  f->len = FRAME_HEADER + len;
  f->stored = true;
  f->stored_pos = pos;
  frame_header(f->bytes, F_RECORD, (uint32_t)len);
  return enqueue(g, sid, f);
}

EXPORT int32_t cn_gateway_copy(cn_gateway *g, uint32_t sid, uint32_t order, int32_t fd, uint64_t size,
                               uint64_t chunk, const char *volume, const char *kind, const uint32_t *indexes,
                               uint32_t count) {
  if (count < 1 || count > COPY_MAX || chunk < COPY_CHUNK_MIN || chunk > COPY_CHUNK_MAX || size == 0 ||
      strlen(volume) >= sizeof ((copy_t *)0)->volume || strlen(kind) >= sizeof ((copy_t *)0)->kind) {
    return -EINVAL;
  }
  for (uint32_t k = 0; k < count; k++) {
    if ((uint64_t)indexes[k] * chunk >= size) return -EINVAL;
  }
  pthread_mutex_lock(&g->mu);
  gsess *s = session(g, sid);
  if (!s) {
    pthread_mutex_unlock(&g->mu);
    return -ENOTCONN;
  }
  pthread_mutex_lock(&s->mu);
  copy_t *c = NULL;
  for (int i = 0; i < COPY_SLOTS && !c; i++) {
    if (!s->copies[i].used) c = &s->copies[i];
  }
  int32_t r = 0;
  int dup_fd = -1;
  if (!c) r = -EBUSY;
  else if ((dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) r = -errno;
  else {
    c->used = true;
    c->order = order;
    c->serial = s->copy_serial++; // serial × 256 stays far below 2^52
    c->fd = dup_fd;
    c->size = size;
    c->chunk = chunk;
    snprintf(c->volume, sizeof c->volume, "%s", volume);
    snprintf(c->kind, sizeof c->kind, "%s", kind);
    c->n = count;
    c->sent = c->settled = 0;
    c->advised = false;
    memcpy(c->idx, indexes, count * sizeof *indexes);
    memset(c->state, CHUNK_UNSENT, sizeof c->state);
    pthread_cond_signal(&s->cv);
  }
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_unlock(&g->mu);
  return r;
}

EXPORT int64_t cn_gateway_queued(cn_gateway *g, uint32_t sid) {
  pthread_mutex_lock(&g->mu);
  gsess *s = session(g, sid);
  int64_t n = -ENOTCONN;
  if (s) {
    pthread_mutex_lock(&s->mu);
    n = (int64_t)s->q_bytes;
    pthread_mutex_unlock(&s->mu);
  }
  pthread_mutex_unlock(&g->mu);
  return n;
}

EXPORT void cn_gateway_fence(cn_gateway *g, const char *agent, const char *reason) {
  pthread_mutex_lock(&g->mu);
  if (g->closed) {
    pthread_mutex_unlock(&g->mu);
    return;
  }
  for (fence_t **p = &g->fences; *p; p = &(*p)->next) {
    if (strcmp((*p)->agent, agent) == 0) {
      fence_t *x = *p;
      *p = x->next;
      free(x);
      break;
    }
  }
  if (reason && reason[0]) {
    fence_t *x = calloc(1, sizeof *x);
    if (x) {
      snprintf(x->agent, sizeof x->agent, "%s", agent);
      snprintf(x->reason, sizeof x->reason, "%s", reason);
      x->next = g->fences;
      g->fences = x;
    }
  }
  pthread_mutex_unlock(&g->mu);
}

EXPORT void cn_gateway_close(cn_gateway *g) {
  if (!g) return;
  pthread_mutex_lock(&g->mu);
  if (g->closed) {
    pthread_mutex_unlock(&g->mu);
    return;
  }
  g->closing = g->closed = true;
  pthread_mutex_unlock(&g->mu);
  for (int i = 0; i < g->nl; i++) {
    listener_stop(&g->listeners[i]);
  }
  journal_on_durable(g->j, NULL, NULL);
  pthread_mutex_lock(&g->mu);
  // queued frames go out first (an agent's last answers), then every session ends
  for (gsess *s = g->sessions; s; s = s->next) {
    pthread_mutex_lock(&s->mu);
    s->ending = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
  }
  int64_t deadline = mono_ns() + 2000000000LL;
  for (;;) {
    bool drained = true;
    for (gsess *s = g->sessions; s; s = s->next) {
      pthread_mutex_lock(&s->mu);
      drained = drained && (s->sender_done || !s->tx);
      pthread_mutex_unlock(&s->mu);
    }
    if (drained || mono_ns() > deadline) break;
    pthread_mutex_unlock(&g->mu);
    usleep(5000);
    pthread_mutex_lock(&g->mu);
  }
  for (gsess *s = g->sessions; s; s = s->next) shutdown(s->fd, SHUT_RDWR);
  while (g->live > 0) pthread_cond_wait(&g->changed, &g->mu);
  reap(g);
  pthread_mutex_unlock(&g->mu);
  free(g->ended);
  while (g->secrets) {
    secret_t *x = g->secrets;
    g->secrets = x->next;
    memset(x, 0, sizeof *x);
    free(x);
  }
  while (g->fences) {
    fence_t *x = g->fences;
    g->fences = x->next;
    free(x);
  }
}

EXPORT void cn_gateway_free(cn_gateway *g) {
  if (!g) return;
  cn_gateway_close(g);
  pthread_mutex_destroy(&g->mu);
  pthread_cond_destroy(&g->changed);
  free(g);
}
