// The journal's internal API (journal.c), for the gateway's ingest (gateway.c).
#ifndef CN_JOURNAL_H
#define CN_JOURNAL_H
#include "internal.h"

/** Called by the committer (no lock held) with the volumes whose durable sequence moved. */
typedef void (*durable_fn)(void *ctx, const uint32_t *vols, const uint64_t *seqs, uint32_t n);
void journal_on_durable(cn_journal *j, durable_fn fn, void *ctx);

/**
 * Appends n verified records (recs[i], lens[i] bytes, header h[i]) for journal volumes vols[i],
 * in order. The headers are restamped in place. Waits for space (and for each volume's bound);
 * `partial`: waits only while none is in, and returns how many are once the next would wait.
 * Returns the count appended, or -errno when the journal failed or closed before any was.
 * positions (optional) get each record's position.
 */
int journal_append(cn_journal *j, uint8_t *const *recs, const uint32_t *lens, const uint32_t *vols, const rec_t *h,
                   uint32_t n, uint64_t *positions, bool partial);
/**
 * Runs the group commit on the calling thread when a barrier waits for it and no commit is in
 * progress: an agent's FLUSH then costs no hand-off to the committer. True if it committed.
 */
bool journal_commit_inline(cn_journal *j);
/** The volume's size and last sequence number appended (false if unknown). */
bool journal_volume(cn_journal *j, uint32_t id, uint64_t *size, uint64_t *last_seq, uint64_t *durable_seq);
/**
 * Copies the record of `len` bytes at position pos (as a headers-only cn_journal_read gave it)
 * into out and verifies it there (position, length, checksums). Returns len, -ESTALE when the
 * record there is no longer that one (overwritten since), -EIO or -EINVAL.
 */
int64_t journal_copy_record(cn_journal *j, uint64_t pos, uint64_t len, uint8_t *out);
#endif
