// A captured volume (capture.c) and the agent around it (agent.c): the queue of one volume's
// operations, in arrival order, through sequencing, the link and the local disk.
#ifndef CN_CAPTURE_H
#define CN_CAPTURE_H
#include "dirty.h"
#include "nbd.h"

enum { LINK_DOWN = 0, LINK_OPENING = 1, LINK_SYNCED = 2 };

typedef struct {
  uint8_t kind, flags;
  bool filled;    // the payload is in the ring (or there is none)
  bool voided;    // never becomes a record (client gone mid-payload, dirty map unwritable)
  bool resync;    // content read from the local disk: a chunk resent from the dirty map
  bool read_started, read_done, read_failed;
  bool released;  // past the queue head: sent (or tracked) and handed to the local writer
  bool local_done;
  bool tracked;   // covered by the dirty map: no acknowledgement is needed
  bool settled;   // the client was answered
  uint32_t error; // NBD error from the local disk
  uint32_t length;
  uint64_t offset;
  uint64_t seq;       // 0 until sequenced (and for tracked operations)
  uint64_t dirty_gen; // the dirty map generation that must be durable first
  uint8_t *frame;     // frame header + record header + payload, inside the ring
  uint32_t frame_len;
  uint64_t ring_end; // the ring position after this operation's bytes
  nbd_conn *conn;
  uint64_t handle;
  int64_t deadline; // block mode: when an absent gateway fails the request
} op_t;

struct cvol {
  cn_agent *agent;
  uint32_t link_id;
  char name[65];
  int fd;
  /** The same file opened again for resync reads, readahead off (-1: fd is used). */
  int rfd;
  uint64_t size;
  cn_dirty *dirty;
  pthread_mutex_t mu;
  pthread_cond_t space; // NBD readers wait for room
  pthread_cond_t work;    // the local writer waits for operations, syncs and reads
  pthread_cond_t persist; // the dirty-map persister waits for bits to make durable
  pthread_cond_t quiet; // removal waits for the queue to drain
  // bytes of records, laid end to end; an operation's frame never wraps
  uint8_t *ring;
  uint64_t ring_cap, ring_head, ring_tail;
  // operations by index: [q_tail, q_head) exist; indexes only grow
  op_t *ops;
  uint64_t ops_cap;
  uint64_t q_head;    // next to allocate
  uint64_t q_release; // the queue head: next to sequence
  uint64_t q_local;   // next for the local writer
  bool local_busy;    // a claimed range of local writes is in progress (one claimer at a time keeps their order)
  bool inline_local;  // the submitting NBD reader writes the operation itself: the writer is not woken
  bool writer_held;   // the local writer waits for a reader's claimed write to end
  uint64_t q_send;    // next for the link sender
  uint64_t q_acc;     // first whose acceptance is not settled yet
  uint64_t q_dur;     // first not known durable (or not needing it)
  uint64_t q_tail;    // oldest not freed
  uint64_t send_pin;  // the sender reads frames from here (UINT64_MAX: idle)
  uint64_t seq, accepted_seq, durable_seq;
  uint64_t unconfirmed; // bytes sent and not durable
  int link;
  bool dropped; // records were not sent: the gateway must be resynchronised from the dirty map
  bool sticky;  // the dirty map is never cleared: it tracks what was written since a common point
  bool opened_once, removing;
  int holds;     // NBD exports using the volume
  uint64_t unsettled;
  uint64_t arrivals, released_arrivals;
  // resynchronisation from the dirty map
  uint64_t resync_chunk; // next chunk to look at
  bool resync_active;
  uint32_t resync_in_flight;
  uint64_t resync_total, resync_done;
  // sweep: chunks touched in this interval and the previous one stay marked
  uint8_t *touched, *recent;
  int sweep_phase;
  int64_t sweep_at;     // when the next sweep starts, or the running one gives up
  uint64_t sweep_mark;  // phase 1: the arrivals it waits to see sequenced; phase 2: the sequence it waits to see durable
  uint64_t sweep_epoch, link_epoch;
  uint64_t sync_req, sync_done; // fdatasync requests to the local writer
  int64_t idle_since;
  // threads
  pthread_t writer, persister;
  bool stop;
  // counters
  uint64_t writes, bytes_written;
};

struct cn_agent {
  cn_plane *plane;
  char id[129];
  uint8_t secret[1024];
  size_t secret_len;
  addr_t gateway;
  char gateway_text[300];
  bool track;
  int64_t gateway_timeout_ns;
  uint64_t max_unconfirmed;
  int handshake_timeout_ms;
  pthread_mutex_t mu;
  pthread_cond_t send_cv;  // with wake_mu: the sender has work
  pthread_cond_t state_cv; // with mu: the link's state changed
  pthread_cond_t house_cv; // with mu: housekeeping sleeps on it between ticks (woken to stop)
  cvol **vols;
  uint32_t nvols, vols_cap;
  uint32_t vol_users; // threads using volumes outside mu: removal waits for them
  pthread_mutex_t fence_mu; // a leaf lock: taken under a volume's
  char fence[512];
  bool fenced;
  bool chunk_writes; // under fence_mu: recovery writes are served in the data plane (chunks.c)
  struct chunk_writers *cw; // chunks.c: the threads and buffers that write them
  struct standby *sb;       // standby.c: a standby server's copies, written from the link thread
  pthread_mutex_t wake_mu; // a leaf lock: the sender's wake-ups
  bool send_pending;
  // link
  int sock;
  bool connected, closing, restarting, started;
  uint64_t conn_epoch;
  sealer_t *tx, *rx;
  int64_t backoff_ms;
  bool poked;
  uint64_t connected_since;
  char last_error[512];
  // frames TypeScript sends (control, chunk replies, a standby's acknowledgements)
  struct outframe *out_head, *out_tail;
  uint64_t out_bytes;
  bool sending; // the sender holds frames outside the lock
  uint64_t batches;
  pthread_t link_thr, sender_thr, house_thr;
  uint8_t *sbuf; // the sender's batch (sealed in place)
};

struct outframe {
  struct outframe *next;
  uint64_t len;
  uint8_t bytes[];
};

// chunks.c, for agent.c: recovery chunk writes, written by the chunk writers off the link thread.

/** A chunk writer's buffer (CHUNK_WRITE_SLOTS of them): a chunk unsealed into it waits there for a writer. */
typedef struct cw_slot cw_slot;
#define CHUNK_WRITE_SLOTS 4
struct chunk_writers *chunk_writers_new(void);
/** Once the link thread ended: queued writes are dropped, those in progress end, the writers stop. */
void chunk_writers_free(cn_agent *a);
/**
 * Before the fence lifts (or chunk writes are switched off): queued writes are refused (answered),
 * those in progress end, and none is taken until chunk_writes_resume.
 */
void chunk_writes_hold(cn_agent *a);
void chunk_writes_resume(cn_agent *a);
/** Whether a ChunkOp of this head (u32 JSON length, JSON) and payload length is a write worth unsealing into a writer's buffer. */
bool chunk_write_wanted(const uint8_t *head, uint32_t head_len, uint64_t data_len);
/**
 * A free buffer for a chunk write (the writers start with the first): waits for one when `wait`
 * (backpressure). NULL when the agent takes no chunk write now (not fenced), none is free and
 * !wait, or the writers cannot start. Given back by agent_chunk_write or chunk_slot_drop.
 */
cw_slot *chunk_slot_take(cn_agent *a, bool wait);
uint8_t *chunk_slot_data(cw_slot *s);
void chunk_slot_drop(cn_agent *a, cw_slot *s);
/**
 * A ChunkOp frame from the gateway (head: u32 JSON length and the JSON; data: its payload, in
 * slot s when one was taken for it): 1 when it is queued for the writers (who answer it on the
 * connection `epoch`; s is theirs), 0 to leave it to TypeScript (s stays the caller's).
 */
int agent_chunk_write(cn_agent *a, const uint8_t *head, uint32_t head_len, const uint8_t *data, uint64_t len,
                      cw_slot *s, uint64_t epoch);
/** agent.c: queues a frame on the link's connection `epoch` (0: the one up); -ENOTCONN when it is gone. */
int agent_send_on(cn_agent *a, const uint8_t *frame, uint64_t len, uint64_t epoch);

// standby.c, for agent.c: a standby server's copies, fed by the link thread.
struct standby *standby_new(cn_agent *a);
/** Stops its syncer (after the link thread ended) and frees it. */
void standby_free(struct standby *s);
/**
 * Takes a record frame's body from link `link`: 1 when the agent is no standby (the frame is
 * TypeScript's), 0 taken (or ignored while frozen), -1 with why set (the link is dropped).
 */
int standby_take(struct standby *s, const uint8_t *b, uint64_t len, uint64_t link, char *why, size_t cap);
/** After a batch: the syncer makes what was taken durable. */
void standby_kick(struct standby *s);

// capture.c, for agent.c. Lock order: the chunk writers', the agent's mu, then a volume's mu, then
// the leaf locks (fence_mu, wake_mu, a dirty map's, an NBD connection's).
int cvol_new(cn_agent *a, uint32_t link_id, const char *name, int fd, uint64_t size, const char *dirty_path,
             uint64_t chunk, int dirty_mode, cvol **out, char *err, size_t errcap);
void cvol_free(cvol *v);
/** Re-examines the queue head (with v->mu held). */
void cvol_pump(cvol *v);
void cvol_on_opened(cvol *v, uint64_t last_seq, bool known);
void cvol_on_refused(cvol *v, const char *message);
void cvol_on_link_down(cvol *v);
void cvol_on_accepted(cvol *v, uint64_t seq);
void cvol_on_durable(cvol *v, uint64_t seq);
/** Housekeeping every tick: block-mode timeouts, resynchronisation, the dirty map sweep. */
void cvol_tick(cvol *v, int64_t now);
/** Frames ready to send: fills segs (pointer, length) for operations from v->q_send; returns how many. */
uint32_t cvol_take_frames(cvol *v, const uint8_t **ptrs, uint32_t *lens, uint32_t max, uint64_t max_bytes,
                          uint64_t *through);
void cvol_sent(cvol *v, uint64_t through);
bool cvol_has_frames(cvol *v);
bool cvol_quiescent(cvol *v);
/** Waits up to wait_ms until the volume is quiescent; whether it is. */
bool cvol_wait_quiet(cvol *v, int wait_ms);
/** Waits (bounded) for the gateway to hold everything, syncs, clears the map when both sides agree. */
void cvol_drain(cvol *v, int wait_ms);
void cvol_status(cvol *v, uint64_t *out);
/** The agent's link: queues the volume's Open frame (with a.mu held). */
void agent_queue_open(cn_agent *a, cvol *v);
/** The agent's sender has records to send. */
void agent_wake_sender(cn_agent *a);
/**
 * On: this thread's agent_wake_sender calls only note that records wait (it holds locks, or the
 * next request it has read will send them with its own). The note stays until sent.
 */
void agent_defer_send(bool on);
/** Sends what this thread queued while deferring, if anything: on this thread if the sender is idle. */
void agent_send_deferred(cn_agent *a);
#endif
