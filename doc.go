// Package idem makes distributed work safe to repeat: an operation named by
// a key takes effect once, and every duplicate within a window gets the
// original outcome. It holds through client retries, broker redeliveries,
// crashes, timeouts and concurrent duplicates.
//
// # The ledger
//
// A Ledger keeps one Record per (scope, key) in a Store. Begin claims a key
// and answers with exactly one of:
//
//   - acquired: the caller owns the key under a lease and a fencing token,
//     runs the work, then calls Complete (the outcome is stored) or Release
//     (a retryable failure: the key is free again);
//   - replay: the key completed earlier with the same fingerprint; here is
//     the stored outcome;
//   - in flight: another owner's lease is live (*InFlightError says when to
//     retry; WithWait waits for the original instead);
//   - mismatch: the key was used for a different request
//     (ErrFingerprintMismatch), never a replay.
//
// An owner that dies is replaced once its lease ends: the successor gets a
// greater token and the last Checkpoint, and the dead owner's Complete,
// Release and Checkpoint are refused with ErrLeaseLost. Pass Claim.Token to
// side effects so downstream systems can refuse a stale owner too.
//
// Do wraps all of this around a function: it runs the function only when
// acquired, extends the lease while it runs, stores its outcome (or its
// failure) and returns the stored outcome to every duplicate.
//
// # Stores
//
// Store is the driver contract (see store.go); memstore is the reference
// model, store/pebblestore the embedded durable default, and every store
// passes the conformance suite in storetest. Optional capabilities (Lister,
// Sizer, StateSizer, Describer) are found by type assertion.
//
// # Opening a store by URL
//
// OpenStore opens the store a URL names, as idem serve --store does. Store
// packages register their schemes when they are imported, as database/sql
// drivers do, so a program opens only stores it links:
//
//	import (
//		_ "github.com/idemkit/idem/memstore"          // mem:
//		_ "github.com/idemkit/idem/store/pebblestore" // file:DIR
//		_ "github.com/idemkit/idem/store/pgstore"     // postgres://…?schema=NAME
//		_ "github.com/idemkit/idem/store/redisstore"  // redis://…?prefix=NAME
//	)
//
//	store, err := idem.OpenStore(ctx, os.Getenv("IDEM_STORE"), nil)
//
// An unknown scheme is an error wrapping ErrInvalid that names the
// registered schemes (StoreSchemes). OpenConfig asks for a migrated schema
// (Migrate) or a short look with nothing in the background (Inspect). A new
// store registers its own scheme with RegisterStore from an init function.
//
// # Time
//
// Leases and windows are judged by the store's clock, so skewed application
// clocks cannot break mutual exclusion. The ledger's own Clock only paces
// heartbeats and waits; tests inject a ManualClock.
//
// # Keys
//
// Keys are scoped: the same key in two scopes names two records, so scope by
// tenant or principal. With Config.KeySecret the store holds an HMAC of each
// key instead of the key. The ledger never logs keys or outcomes; an
// Observer receives events that carry neither.
package idem
