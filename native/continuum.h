// Continuum's data plane: the per-write path of a protected volume, on native threads.
//
// TypeScript configures these objects and reads what they report; it never handles a
// single captured write. Every handle is opaque. Calls marked BLOCKING may wait (on disk,
// on a peer, on other threads) and are made `nonblocking` from Deno; the others return at
// once. Sizes, offsets and positions are bytes; errors are negative errno values, with a
// message in `err` where the call takes one. Nothing here allocates per write: payloads
// live in bounded rings fixed when a volume or connection starts.
//
// Threads, and what each owns:
//   NBD server      one accept thread per listener; per client connection a reader (requests,
//                   payloads straight into the capture ring, reads answered inline) and a
//                   writer (replies to writes as they complete, many per system call).
//   agent           per captured volume a local writer (operations in sequence order, fdatasync
//                   for FLUSH/FUA) and a dirty-map persister; one link thread (connect,
//                   authenticate, read acknowledgements; unseal a recovery's chunk writes into the
//                   chunk writers' buffers) and one link sender (seals batches of record frames);
//                   one housekeeping thread (timeouts, dirty-map sweeps); from the first recovery
//                   chunk write on, two chunk writers (write a chunk from their 4 buffers of 16 MiB,
//                   answer the gateway).
//   gateway         one accept thread per listener; per agent session a reader (verify, append
//                   to the journal, acknowledge accepted; answers to copied chunks) and a sender
//                   (durable acknowledgements, frames TypeScript sends, copied chunks).
//   journal         the committer (group commit: one fdatasync of the ring per commit, its
//                   checkpoint in the ring's superblock) and the mirror applier with its syncer.
// Locks are never held across a socket or disk wait, except a volume's ring space wait.
//
// Events: every object reports to its plane. cn_plane_events() returns them in order:
//   [u32 length of the event][u16 type][u16 0][u32 source][u32 aux][body...]
// CN_EV_FLAGS (aux: CN_FL_* bits raised since the last call; read the status calls),
// CN_EV_LOG (aux: level; body: module NUL message NUL fields-JSON), CN_EV_FRAME (a frame the
// data plane does not handle itself; source: 0 for the agent's link, the session id on a
// gateway; aux: frame type; body: frame body), CN_EV_LINK (agent link; aux 1 up, 0 down; body:
// reason), CN_EV_VOLUME (agent volume; source: link id; aux: CN_VOL_*; body: JSON),
// CN_EV_SESSION (gateway; source: session id; aux 1 authenticated, 0 ended; body: JSON),
// CN_EV_REFUSED (gateway; body: reason), CN_EV_MARKER (journal; source: volume id; aux: record
// kind SyncBegin 6 / SyncEnd 7, reported once the mirror image holding it is synced),
// CN_EV_FAILED (source: CN_SRC_*; body: message: the object stopped and says why),
// CN_EV_COPIED (gateway; source: session id; aux: the order of cn_gateway_copy; body: [u32
// chunk index][i32 0 written, 1 the agent refused the write, -errno the source could not be
// read][16-byte XXH3-128 of the chunk as sent][reason, when it failed]).
#ifndef CONTINUUM_H
#define CONTINUUM_H

#include <stdint.h>

typedef struct cn_plane cn_plane;
typedef struct cn_nbd cn_nbd;
typedef struct cn_agent cn_agent;
typedef struct cn_journal cn_journal;
typedef struct cn_gateway cn_gateway;
typedef struct cn_dirty cn_dirty;

enum {
  CN_EV_FLAGS = 1,
  CN_EV_LOG = 2,
  CN_EV_FRAME = 3,
  CN_EV_LINK = 4,
  CN_EV_VOLUME = 5,
  CN_EV_SESSION = 6,
  CN_EV_REFUSED = 7,
  CN_EV_MARKER = 8,
  CN_EV_FAILED = 9,
  CN_EV_COPIED = 10,
};
/** Journal positions, commits or the mirror moved (cn_journal_status). */
#define CN_FL_JOURNAL 1u
/** Appends wait for journal space (a reader may give way). */
#define CN_FL_PRESSURE 2u
/** A gateway session's queued frames were taken for sending: cn_gateway_queued fell. */
#define CN_FL_SENT 4u
enum { CN_VOL_OPENED = 1, CN_VOL_REFUSED = 2, CN_VOL_FATAL = 3 };
enum { CN_SRC_JOURNAL = 1, CN_SRC_MIRROR = 2 };

// ---- plane ----

/** A process's event queue; log_level 0 debug … 3 error (below it nothing is formatted). */
cn_plane *cn_plane_new(int32_t log_level);
void cn_plane_set_log_level(cn_plane *p, int32_t level);
/**
 * BLOCKING. Waits up to timeout_ms for events and copies whole events into buf. Returns the
 * bytes written, 0 on timeout or after cn_plane_wake, or -(size needed) when the next event
 * is larger than cap (call again with a larger buffer).
 */
int64_t cn_plane_events(cn_plane *p, uint8_t *buf, uint64_t cap, int32_t timeout_ms);
/** Makes a waiting cn_plane_events return (at shutdown). */
void cn_plane_wake(cn_plane *p);
/** Frees the plane once every object using it is closed. */
void cn_plane_free(cn_plane *p);
/** CLOCK_MONOTONIC in nanoseconds (the clock of entry times in cn_journal_read). */
int64_t cn_mono_ns(void);

// ---- NBD server (fixed newstyle; NetworkBlockDevice/nbd doc/proto.md) ----

/**
 * BLOCKING (binds). Listens on a Unix socket path and/or a TCP "host:port" (either may be
 * empty). *tcp_port gets the bound port. NULL on failure, with the reason in err.
 */
cn_nbd *cn_nbd_new(cn_plane *p, const char *unix_path, const char *tcp_addr, int32_t *tcp_port, char *err,
                   uint64_t errcap);
/** Exports a plain file or device (a standby copy read-only, a test copy writable). */
int32_t cn_nbd_export_file(cn_nbd *s, const char *name, int32_t fd, uint64_t size, int32_t read_only,
                           const char *description);
/** Exports a captured volume of an agent: every write becomes a record (see cn_agent_add_volume). */
int32_t cn_nbd_export_volume(cn_nbd *s, const char *name, cn_agent *a, uint32_t link_id, const char *description);
/**
 * BLOCKING. Withdraws an export: its clients' requests in flight are answered, later ones get
 * ESHUTDOWN, and each connection closes when its client leaves (at most 2 s later).
 */
int32_t cn_nbd_withdraw(cn_nbd *s, const char *name);
/** BLOCKING. Stops accepting, answers what is in flight, closes every connection, frees. */
void cn_nbd_close(cn_nbd *s);

// ---- agent: captured volumes and the sealed link to the local gateway ----

/**
 * A link to the gateway at "host:port" or "unix:/path", authenticated by the agent's secret.
 * track: when the gateway is unreachable, writes go on and their chunks stay marked in the
 * dirty map (else they wait up to gateway_timeout_ms, then fail with EIO).
 * max_unconfirmed: bytes of records kept per volume until the gateway has them durable.
 */
cn_agent *cn_agent_new(cn_plane *p, const char *id, const uint8_t *secret, uint32_t secret_len, const char *gateway,
                       int32_t track, int64_t gateway_timeout_ms, uint64_t max_unconfirmed,
                       int32_t handshake_timeout_ms, char *err, uint64_t errcap);
/** Starts connecting (reconnecting with backoff from then on); -errno when its threads cannot start. */
int32_t cn_agent_start(cn_agent *a);
/** Connects again now instead of at the end of the backoff. */
void cn_agent_poke(cn_agent *a);
/**
 * BLOCKING. Captures a volume: fd (open read-write, owned by the caller until removal), its
 * size, its persistent dirty map at dirty_path with `chunk`-byte chunks. dirty_mode 0 keeps the
 * map as found, 1 clears it (the gateway's copy is known equal), 2 sets every bit; plus
 * CN_DIRTY_STICKY: bits are never cleared (no sweep, none at removal), so the map holds every
 * chunk written since it was last cleared (a promoted standby's divergence from its old primary).
 */
int32_t cn_agent_add_volume(cn_agent *a, uint32_t link_id, const char *name, int32_t fd, uint64_t size,
                            const char *dirty_path, uint64_t chunk, int32_t dirty_mode, char *err, uint64_t errcap);
#define CN_DIRTY_STICKY 4
/**
 * A captured volume's dirty map: its bits into out (cap bytes at most, one bit a chunk, chunk c
 * at byte c/8 bit c%8), *chunk gets the map's chunk size; returns the count of set bits, or
 * -ENOENT for an unknown volume.
 */
int64_t cn_agent_volume_dirty(cn_agent *a, uint32_t link_id, uint8_t *out, uint64_t cap, uint64_t *chunk);
/**
 * BLOCKING. Stops capturing a volume (its NBD export must be withdrawn first): waits up to
 * wait_ms for the gateway to hold every record durably, syncs the disk and, when both sides
 * agree, clears the dirty map.
 */
int32_t cn_agent_remove_volume(cn_agent *a, uint32_t link_id, int32_t wait_ms);
/**
 * Makes every captured volume read-only (EPERM to writers) with a reason; NULL or "" lifts it.
 * Lifting it refuses the recovery chunk writes still queued and waits for the ones being
 * written (at most two chunks into the page cache; none unless a recovery is running).
 */
void cn_agent_fence(cn_agent *a, const char *reason);
/** Queues a whole frame (5-byte header and body) on the link; -ENOTCONN when it is down. */
int32_t cn_agent_send(cn_agent *a, const uint8_t *frame, uint64_t len);
/** BLOCKING. Ends the connection once what is queued is sent; it is made again at once. */
void cn_agent_reconnect(cn_agent *a);
/**
 * A volume's counters into out[16]: link state (0 down, 1 opening, 2 synced), seq, accepted,
 * durable, queued ops, unsettled ops, unconfirmed bytes, dirty chunks, resync total, done,
 * remaining, quiescent, read-only, writes, bytes written.
 */
int32_t cn_agent_volume_status(cn_agent *a, uint32_t link_id, uint64_t *out);
/**
 * BLOCKING. Waits up to wait_ms until the volume is quiescent (nothing queued or unsettled, the
 * link up, the gateway holding every record durably): 1 when it is, 0 when the time ran out.
 */
int32_t cn_agent_volume_wait_quiet(cn_agent *a, uint32_t link_id, int32_t wait_ms);
/** The link: out[4] = up, queued bytes, connected since (wall ms), sealed batches sent; err gets the last error. */
void cn_agent_link_status(cn_agent *a, uint64_t *out, char *err, uint64_t errcap);
/** BLOCKING. Sends what is queued, closes the link, stops every thread, frees. */
void cn_agent_close(cn_agent *a);

// ---- journal: the ring buffer, group commit, readers, and the mirror applier ----

/**
 * BLOCKING. Opens (creating and preallocating if missing) the ring at path. db_* are the
 * database's index: its tail, head and mirror position (used when the ring has no checkpoint
 * yet), and its volumes (vols: nvols × [u32 id][u64 last sequence]). The records after the
 * index's head are found by walking the ring, each the next of its volume's sequence. info
 * gets JSON: ringId, dataSize, tail, head, mirrorPos and what was recovered (records, from,
 * to, firstTime, lastTime, volumes: {id: last sequence}); on failure NULL and {"error": …}.
 * A group commit happens at a barrier, once commit_bytes wait, commit_delay_ms after the first
 * uncommitted write, or once the appends paused for commit_idle_ms (-1: a pause alone does not).
 * flags: CN_JOURNAL_WRITE_THROUGH writes a ring file created here through once (zeroes, synced)
 * instead of only preallocating it: a preallocated block is an unwritten extent until its first
 * write, which makes that write's sync commit the filesystem's journal too (a slower group commit
 * during the ring's first lap).
 */
#define CN_JOURNAL_WRITE_THROUGH 1
cn_journal *cn_journal_open(cn_plane *p, const char *path, uint64_t size, uint64_t db_tail, uint64_t db_head,
                            uint64_t db_mirror, const uint8_t *vols, uint32_t nvols, int32_t commit_delay_ms,
                            int32_t commit_idle_ms, uint64_t commit_bytes, uint64_t retain_bytes, int32_t flags,
                            char *info, uint64_t infocap);
/** Registers a volume (journal id, size, last sequence, the mirror image's fd or -1). */
int32_t cn_journal_add_volume(cn_journal *j, uint32_t id, uint64_t size, uint64_t last_seq, int32_t image_fd);
/** Most journal bytes the volume's records may hold (0: no bound); its appends wait beyond it. */
void cn_journal_set_bound(cn_journal *j, uint32_t id, uint64_t bound);
/**
 * BLOCKING. Appends verified records laid end to end in buf (a remote site's stream), in order,
 * each restamped to vol_ids[i]; positions[i] gets each one's position. Waits for space while
 * none is in; returns how many are in (the first `count`, or fewer when the next would wait),
 * or -errno when none could be.
 */
int64_t cn_journal_append(cn_journal *j, const uint8_t *buf, uint64_t len, const uint32_t *vol_ids, uint32_t count,
                          uint64_t *positions);
/** A reader: holds journal space from pos (if required) until it releases it. Returns its id. */
int32_t cn_journal_cursor(cn_journal *j, uint64_t pos, int32_t required);
void cn_journal_cursor_release(cn_journal *j, int32_t id, uint64_t pos);
void cn_journal_cursor_required(cn_journal *j, int32_t id, int32_t required);
void cn_journal_cursor_drop(cn_journal *j, int32_t id);
/**
 * Paces a reader (the replication lag bound): with bytes > 0 appends wait (the agents' writes with
 * them) while it is more than bytes behind; 0 stops. The sender paces a site that is in step
 * (connected and caught up) with what it takes in the bound; a disconnected or resynchronising one
 * is not paced, or the application would wait for it.
 */
void cn_journal_cursor_pace(cn_journal *j, int32_t id, uint64_t bytes);
/** When the record at pos entered the journal (cn_mono_ns), or 0 if unknown (not written, or too old). */
int64_t cn_journal_entered(cn_journal *j, uint64_t pos);
/** cn_journal_read: each record's header only (its payload is sent by reference: cn_gateway_send_stored). */
#define CN_READ_HEADS 1
/**
 * BLOCKING (disk). Copies durable records from pos (about max_bytes of them) into out:
 * [u64 pos][u64 end][i64 entered (cn_mono_ns, 0 if unknown)][u32 length][record], each
 * record verified; with CN_READ_HEADS only its 72-byte header follows `length` (the record's
 * whole length), the header verified. A wrap has length 0 and nothing after it. Returns the
 * bytes written, or -EIO when the record at pos is unreadable, -ENOBUFS when it does not fit.
 */
int64_t cn_journal_read(cn_journal *j, uint64_t pos, uint64_t max_bytes, uint8_t *out, uint64_t cap, int32_t flags);
/**
 * out[10]: tail, durable, head, capacity, mirror applied, mirror synced, failure (errno),
 * records committed (total), appends waiting for space, commits.
 */
void cn_journal_status(cn_journal *j, uint64_t *out);
/**
 * For the index, one consistent snapshot: out[6] = durable position, records committed since
 * the previous call, the first and last capture time among them (0 if none), the tail, the
 * mirror's applied position; seqs[id] = each volume's durable sequence at that position
 * (UINT64_MAX for an id the journal does not have yet). Returns how many ids it filled (the
 * journal's volume slots, at most cap).
 */
uint32_t cn_journal_take_index(cn_journal *j, uint64_t *out, uint64_t *seqs, uint32_t cap);
/** out[6]: last seq, durable seq, bytes held, mirror seq, mirror capture time, bound. */
int32_t cn_journal_volume_status(cn_journal *j, uint32_t id, uint64_t *out);
/** BLOCKING. Waits until everything appended so far is durable. */
int32_t cn_journal_flush(cn_journal *j);
/**
 * Starts applying durable records to the volumes' images, in journal order. Images are synced
 * after sync_bytes, sync_interval_ms, (idle_sync_ms ≥ 0) that long without new records, or at
 * once when an append waits for space; records are released to the journal once their images
 * are synced. Start it once every reader's cursor is registered: until then no journal space is
 * released.
 */
int32_t cn_journal_mirror_start(cn_journal *j, uint64_t sync_bytes, int32_t sync_interval_ms, int32_t idle_sync_ms);
/** BLOCKING. Stops applying once the batch in progress is done (the images stay put). */
int32_t cn_journal_mirror_hold(cn_journal *j);
void cn_journal_mirror_release(cn_journal *j);
/** BLOCKING. Applies what is durable, syncs the images and stops the mirror (their fds may close after). */
void cn_journal_mirror_stop(cn_journal *j);
/** BLOCKING. Commits what is written, stops the mirror, closes the ring (its status stays readable). */
void cn_journal_close(cn_journal *j);
/** Frees a journal (closing it first if needed). */
void cn_journal_free(cn_journal *j);

// ---- gateway: the agents' sealed links into a journal ----

cn_gateway *cn_gateway_new(cn_plane *p, cn_journal *j, int32_t handshake_timeout_ms);
/** BLOCKING (binds). Listens at "host:port" or "unix:/path"; *port gets the bound TCP port. */
int32_t cn_gateway_listen(cn_gateway *g, const char *addr, int32_t *port, char *err, uint64_t errcap);
/** Adds or replaces an agent's secret (len 0 removes it). */
void cn_gateway_secret(cn_gateway *g, const char *agent, const uint8_t *secret, uint32_t len);
/**
 * Opens a volume an agent announced (after TypeScript registered it): its records are taken from
 * now on; the agent gets Opened (lastSeq, known, journalId) and the acknowledgements the journal
 * already holds.
 */
int32_t cn_gateway_open_volume(cn_gateway *g, uint32_t session, uint32_t link_id, uint32_t volume_id, uint64_t size,
                               int32_t known, const char *name);
/**
 * Queues a frame for an agent's session: its first len bytes (at least the 5-byte header),
 * then blen bytes of body (a record sent without joining it to its header); -ENOTCONN when
 * the session is gone.
 */
int32_t cn_gateway_send(cn_gateway *g, uint32_t session, const uint8_t *frame, uint64_t len, const uint8_t *body,
                        uint64_t blen);
/**
 * Queues a record's frame for an agent's session by reference (a standby's stream): the
 * session's sender reads the record, len bytes at journal position pos (as a headers-only
 * cn_journal_read gave them), from the journal straight into its sealed batch and verifies it
 * there. A record no longer there (its reader was optional and the journal overwrote it since)
 * ends the session instead, with a warning: nothing after it is sent. -ENOTCONN when the
 * session is gone, -EINVAL for a length no record has.
 */
int32_t cn_gateway_send_stored(cn_gateway *g, uint32_t session, uint64_t pos, uint64_t len);
/**
 * Copies chunks of a local file (a recovery's source: the mirror's image) to an agent's copy of
 * a volume, in the data plane: for each index, in order, the session's sender reads the chunk
 * (`chunk` bytes at index × chunk; the last one up to `size`, zeroes past the file's end)
 * straight into its sealed batch, takes its XXH3-128 there and sends it as a ChunkOp "write" of
 * `volume` (agent/name) in the copy `kind`; the reader takes the agent's answers. Every chunk's
 * outcome is a CN_EV_COPIED event with `order` as aux. fd is duplicated (the caller's may close).
 * At most 16 orders of 1 to 64 chunks per session are in flight: -EBUSY beyond; -ENOTCONN when
 * the session is gone (chunks in flight when it ends get no event: the session's end says it),
 * -EINVAL for a chunk size outside 4 KiB–16 MiB or an index past size.
 */
int32_t cn_gateway_copy(cn_gateway *g, uint32_t session, uint32_t order, int32_t fd, uint64_t size, uint64_t chunk,
                        const char *volume, const char *kind, const uint32_t *indexes, uint32_t count);
/**
 * Bytes queued for an agent's session behind the write in progress (a standby's stream paces
 * itself by it); CN_FL_SENT says when they were taken for sending.
 */
int64_t cn_gateway_queued(cn_gateway *g, uint32_t session);
/** An agent's writes are refused (its service runs elsewhere); NULL or "" lifts it. */
void cn_gateway_fence(cn_gateway *g, const char *agent, const char *reason);
/** BLOCKING. Closes every session and listener (later calls find no session). */
void cn_gateway_close(cn_gateway *g);
/** Frees a gateway (closing it first if needed). */
void cn_gateway_free(cn_gateway *g);

// ---- a persistent chunk bitmap (the agent's dirty map; what a site missed, or its promoted copy lacks) ----

/** BLOCKING. Opens or creates the map; a missing or mismatched one starts all set (*fresh = 1). */
cn_dirty *cn_dirty_open(const char *path, uint64_t volume_size, uint64_t chunk, int32_t *fresh, char *err,
                        uint64_t errcap);
/** BLOCKING. Sets the chunks of a byte range and makes them durable: 1 when that took a write, 0 when they were already. */
int32_t cn_dirty_mark(cn_dirty *d, uint64_t offset, uint64_t length);
/** BLOCKING. Sets every chunk, durably (1). */
int32_t cn_dirty_mark_all(cn_dirty *d);
/** BLOCKING. Sets chunks (u32 indexes; out of range ones ignored), durably, in one write: 1 when that took one. */
int32_t cn_dirty_mark_chunks(cn_dirty *d, const uint32_t *chunks, uint32_t count);
/** BLOCKING. Clears chunks (u32 indexes), durably. */
int32_t cn_dirty_clear(cn_dirty *d, const uint32_t *chunks, uint32_t count);
/** Copies the bitmap (chunks/8 bytes, bit c of byte c/8) into out; returns the set count. */
int64_t cn_dirty_bits(cn_dirty *d, uint8_t *out, uint64_t cap);
void cn_dirty_close(cn_dirty *d);

// ---- file I/O for TypeScript's own work (recovery, hashing, standby copies) ----

int64_t cn_pread(int fd, uint8_t *buf, uint64_t len, uint64_t off);
int64_t cn_pwrite(int fd, const uint8_t *buf, uint64_t len, uint64_t off);
int64_t cn_fdatasync(int fd);
/** Reserves the blocks of a range (posix_fallocate). */
int64_t cn_allocate(int fd, uint64_t off, uint64_t len);
/**
 * cn_pread of a range read once (a chunk a synchronisation copies to a peer): through a
 * descriptor of its own without readahead, its pages dropped after, so that it leaves no large
 * folios behind (small writes into them are slow). Returns bytes read or -errno.
 */
int64_t cn_pread_once(int fd, uint8_t *buf, uint64_t len, uint64_t off);
/** Size of a regular file or block device. */
int64_t cn_size(int fd);
int32_t cn_is_blockdev(int fd);
int64_t cn_punch_hole(int fd, uint64_t off, uint64_t len);
int64_t cn_write_zeroes(int fd, uint64_t off, uint64_t len, uint32_t may_trim);
/**
 * Many operations in order with one call: desc holds (pointer, length, offset, op) quadruples;
 * op 0 writes, 1 discards, 2 zeroes, 3 zeroes allowing deallocation, 4 reads (past the end:
 * zeroes). flags bit 0: fdatasync at the end.
 */
int64_t cn_apply_batch(int fd, const uint64_t *desc, uint32_t n, uint32_t flags);
/** XXH3-128 of a buffer, big-endian canonical form. */
void cn_xxh3_128(const uint8_t *buf, uint64_t len, uint8_t *out16);
/** XXH3-128 of each `chunk` bytes of [off, off+len) into out (16 bytes a chunk); returns the count. */
int64_t cn_hash_range(int fd, uint64_t off, uint64_t len, uint64_t chunk, uint8_t *out);

// ---- sealed batches for the site links (TypeScript carries the bytes) ----
typedef struct cn_sealer cn_sealer;
/**
 * One direction of a site link session: AES-256-GCM, the nonce a counter of the batches this
 * direction carried, the batch's 4-byte big-endian length in clear and authenticated (as the
 * agent link's batches). `encrypt`: 1 seals, 0 opens. NULL when out of memory.
 */
cn_sealer *cn_sealer_new(const uint8_t *key32, int32_t encrypt);
/** Frees the sealer and cleanses its key schedule. */
void cn_sealer_free(cn_sealer *s);
/** Seals `len` bytes of `in` as the next batch into `out` (len + 20 bytes): 0, or -EIO. */
int32_t cn_seal(cn_sealer *s, const uint8_t *in, uint32_t len, uint8_t *out);
/**
 * Opens the next batch in place: `buf` holds the batch as sealed (length, `len` bytes, tag);
 * the plain bytes replace the sealed ones at buf + 4. 0; -EBADMSG: the batch was altered,
 * replayed, reordered or sealed with another key; -EINVAL: `len` is not the batch's length.
 */
int32_t cn_unseal(cn_sealer *s, uint8_t *buf, uint32_t len);

// ---- pure checks, exposed for the fuzzers ----

/**
 * One NBD option against a list of exports ("name\0size\0ro\0description\0" repeated): writes
 * the replies into out; *outcome: bit 0 selected, bit 1 close, bits 8+ the selected export's
 * index; returns the reply bytes.
 */
int64_t cn_nbd_option_probe(const uint8_t *exports, uint64_t exports_len, int32_t no_zeroes, uint32_t option,
                            const uint8_t *data, uint64_t len, uint8_t *out, uint64_t cap, int32_t *outcome);
/** The client's handshake flags: 0 accepted, 1 unknown bits, 2 no fixed newstyle. */
int32_t cn_nbd_client_flags(uint32_t flags);
/** A 28-byte request header against an export: the NBD error to answer, 0 to proceed, -1 bad magic. */
int32_t cn_nbd_request_check(const uint8_t *header, uint64_t size, int32_t read_only);
/** Decodes and verifies one record; out[8] gets its fields. 0, or -1 bad header, -2 bad payload. */
int32_t cn_record_check(const uint8_t *b, uint64_t len, uint32_t max_length, uint64_t *out);

// ---- agent: recovery chunk writes in the data plane (chunks.c) ----

/**
 * While on, the agent serves the gateway's ChunkOp "write" frames for its captured volumes itself
 * whenever it is fenced: the link thread unseals the chunk straight into a free buffer of the
 * chunk writers (waiting for one when all 4 are taken), and a writer writes it and sends the
 * ChunkReply. Writes of the same bytes land in the order they came; replies to writes of
 * distinct chunks may come out of order. A reply is sent on the connection that asked only. Other
 * chunk operations, and writes it would not accept (not fenced, unknown volume, wrong length),
 * reach TypeScript as frame events as before. Switching it off acts as lifting the fence does on
 * the writes queued and in progress.
 */
void cn_agent_serve_chunk_writes(cn_agent *a, int32_t on);

// ---- agent: a standby server's copies (standby.c) ----

/**
 * Registers a standby copy: once the agent is a standby (cn_agent_standby_thaw), the record
 * frames the gateway sends are written to its copies here, off TypeScript. The link thread
 * verifies each record (checksums, bounds, the replica's sequence rule of src/record/sequence.ts)
 * and writes it at once, in stream order; a thread makes what was written durable (one fdatasync
 * a copy), then saves each copy's position and state (0 empty, 1 consistent, 2 inconsistent) in
 * its slot file at slot_path (the format of src/io/slot-file.ts: written here, and by TypeScript
 * only while the copy is not registered), then sends an Accepted frame with the count of records
 * taken on this link. A record that fails a check, or a write that fails, drops the link (the
 * gateway resends from the saved position; a failure is tried again on the next link). A copy of
 * that name already registered only takes the new journal id (a new link names it anew). fd stays
 * the caller's.
 */
int32_t cn_agent_standby_add(cn_agent *a, const char *name, uint32_t journal_id, int32_t fd, uint64_t size,
                             uint64_t last_seq, int32_t state, const char *slot_path, char *err, uint64_t errcap);
/**
 * A registered copy: out[0] its position (records written), out[1] its saved position, out[2] its
 * state, out[3] the count last acknowledged on the current link, out[4] the records taken on it.
 * -ENOENT when not registered.
 */
int32_t cn_agent_standby_status(cn_agent *a, const char *name, uint64_t *out);
/**
 * BLOCKING. Stops applying (records are then ignored, not acknowledged), waits until everything
 * taken is durable with its position, and releases every copy (their slot files then hold their
 * last state). -EIO with the reason in err when a write failed since the link began: the copies
 * stay registered and frozen.
 */
int32_t cn_agent_standby_freeze(cn_agent *a, char *err, uint64_t errcap);
/**
 * Makes the agent a standby, or one again after a freeze: record frames are its copies' from now on
 * (one for a copy not registered is refused), counted from 0 as on a new link.
 */
void cn_agent_standby_thaw(cn_agent *a);
/**
 * What the link thread does with a record frame's body received on link number `link`, then the
 * syncer is woken: exported to feed a copy without a gateway (tests). 0 taken, 1 not a standby
 * (the frame goes to TypeScript), -1 refused with the reason in why.
 */
int32_t cn_agent_standby_take(cn_agent *a, const uint8_t *record, uint64_t len, uint64_t link, char *why,
                              uint64_t cap);

#endif
