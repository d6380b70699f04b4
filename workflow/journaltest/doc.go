// Package journaltest is the conformance suite every workflow.Journal
// runs: journaltest.Run(t, newJournal). A journal is done when it passes.
//
//	func TestJournalConformance(t *testing.T) {
//		journaltest.Run(t, func(t *testing.T) workflow.Journal {
//			j := myjournal.New(...)
//			t.Cleanup(func() { j.Close() })
//			return j
//		})
//	}
//
// NewJournal must return a fresh, empty journal each time it is called:
// every case gets one of its own and the cases run in parallel.
//
// # What is checked
//
// Everything the workflow.Journal contract promises, as MemJournal keeps
// it:
//
//   - Create is idempotent by id: the same Fingerprint returns the stored
//     instance (Created false, its history included), another one fails
//     with idem.ErrFingerprintMismatch; an empty id is idem.ErrInvalid; a
//     new instance gets Seq 1 and its entries Seq 1, 2, ...
//   - Create with Replace is a compare-and-set on ReplaceSeq (ErrConflict
//     when stale or when nothing is there) and keeps the history going.
//   - Append is a compare-and-set on Seq: a stale Seq is ErrConflict and
//     changes nothing (neither the instance nor its history); an accepted
//     one replaces every field and appends every entry together. Of many
//     concurrent Appends at one Seq, exactly one wins.
//   - Every field of Instance and Entry round-trips (times compared with
//     Equal, in UTC).
//   - Get of an unknown id is idem.ErrNotFound, as are Append and Delete.
//   - List filters by Type, State, Status, Due and FinishedBefore, orders
//     by id, pages with After/Limit/Next and returns no history.
//   - Delete is a compare-and-set on Seq and removes the history too: a
//     Create of the same id afterwards starts afresh.
//   - Values passed in and returned are copies: changing them later does
//     not change the journal.
//   - Ids that are prefixes of one another ("a", "ab", "a/") or hold
//     separators and non-ASCII letters keep their own histories, list in
//     byte order, and deleting one leaves the others.
//   - A cancelled context fails every method with context.Canceled.
package journaltest
