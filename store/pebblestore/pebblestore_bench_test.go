package pebblestore

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/bench"
)

var benchCallers = []int{1, 8, 64}

// BenchmarkCycles: Begin+Complete cycles on fresh keys, each cycle two
// synced batches. syncs/cycle below 2 is group commit at work. cpu-µs/op
// is the whole process's CPU (Pebble's background work included): at many
// callers, where group commit makes a cycle CPU-bound, it says where
// throughput goes; contention inflates it too, so compare it, like
// cycles/s, only between runs made side by side.
func BenchmarkCycles(b *testing.B) {
	for _, callers := range benchCallers {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			fs := &syncCountingFS{FS: vfs.Default}
			s, err := Open(b.TempDir(), &Config{SweepInterval: -1, fs: fs})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			bench.Cycles(b, s, callers)
			fs.report(b)
		})
	}
}

// BenchmarkRawPebble is the baseline: what a cycle costs on Pebble alone,
// with the store's Pebble settings: a Get and a synced Set of a
// pending-sized value, then a Get and a synced Set of a completed-sized
// value, on a fresh key.
func BenchmarkRawPebble(b *testing.B) {
	r := &idem.Record{Scope: "bench", Key: "bench-64-1764205407000000000-1000000", Fingerprint: "f",
		State: idem.StatePending, Token: 1e6, Attempts: 1, Created: time.Now(), LeaseUntil: time.Now(),
		RetainUntil: time.Now(), Window: idem.DefaultWindow}
	pending := encodeRecord(nil, r, time.Now())
	r.State, r.Completed, r.Expires = idem.StateCompleted, time.Now(), time.Now()
	r.Outcome = &idem.Outcome{Data: []byte(`{"status":"ok"}`), Meta: map[string]string{"status": "200"}}
	completed := encodeRecord(nil, r, time.Now())
	for _, callers := range benchCallers {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			fs := &syncCountingFS{FS: vfs.Default}
			opts := pebbleOptions(nil, 0)
			opts.FS = fs
			db, err := pebble.Open(b.TempDir(), opts)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			prefix := fmt.Sprintf("r/\x05bench-%d-%d", callers, time.Now().UnixNano())
			var next atomic.Int64
			bench.ParallelN(b, callers, func() error {
				key := fmt.Appendf(nil, "%s-%d", prefix, next.Add(1))
				for _, v := range [][]byte{pending, completed} {
					if _, closer, err := db.Get(key); err == nil {
						closer.Close()
					} else if !errors.Is(err, pebble.ErrNotFound) {
						return err
					}
					if err := db.Set(key, v, pebble.Sync); err != nil {
						return err
					}
				}
				return nil
			})
			fs.report(b)
		})
	}
}

// syncCountingFS counts the syncs of the files Pebble writes (the WAL among
// them), so a benchmark can show how many cycles share one.
type syncCountingFS struct {
	vfs.FS
	syncs atomic.Int64
}

type syncCountingFile struct {
	vfs.File
	fs *syncCountingFS
}

func (f syncCountingFile) Sync() error {
	f.fs.syncs.Add(1)
	return f.File.Sync()
}

func (f syncCountingFile) SyncData() error {
	f.fs.syncs.Add(1)
	return f.File.SyncData()
}

func (fs *syncCountingFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, cat)
	if err != nil {
		return nil, err
	}
	return syncCountingFile{f, fs}, nil
}

func (fs *syncCountingFS) ReuseForWrite(oldname, newname string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, cat)
	if err != nil {
		return nil, err
	}
	return syncCountingFile{f, fs}, nil
}

func (fs *syncCountingFS) report(b *testing.B) {
	b.ReportMetric(float64(fs.syncs.Load())/float64(b.N), "syncs/cycle")
}
