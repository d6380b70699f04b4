package pgstore_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/store/pgstore"
	"github.com/idemkit/idem/store/pgstore/pgcrashtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// tableBroker is the "broker" of TestRelaySIGKILL: the downstream table
// whose message_id is unique, given as "URL|TABLE". A publish is an
// INSERT ... ON CONFLICT (message_id) that counts a conflict as a deduped
// duplicate, as a broker's dedup window drops it.
func tableBroker(ctx context.Context, broker string) (pgcrashtest.PublishFunc, func(), error) {
	url, table, _ := strings.Cut(broker, "|")
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context, m *pgstore.OutboxMessage) (bool, error) {
		headers, err := json.Marshal(m.Headers)
		if err != nil {
			return false, err
		}
		var dup bool
		err = pool.QueryRow(ctx, `INSERT INTO `+table+` (message_id, headers) VALUES ($1, $2)
			ON CONFLICT (message_id) DO UPDATE SET dups = `+table+`.dups + 1 RETURNING dups > 0`, m.ID, headers).Scan(&dup)
		return dup, err
	}, pool.Close, nil
}

// TestRelayChild is a relay process of TestRelaySIGKILL (this test binary
// re-executed by pgcrashtest.RunRelay); it skips otherwise.
func TestRelayChild(t *testing.T) {
	if !pgcrashtest.IsRelayChild() {
		t.Skip("a relay process of TestRelaySIGKILL; runs only re-executed by it")
	}
	os.Exit(pgcrashtest.RelayChild(tableBroker))
}

// TestRelaySIGKILL is pgcrashtest.RunRelay with a downstream table for
// broker: two relay processes publish the outbox into a table whose
// message_id is unique (a republished message is absorbed and counted, as
// a broker's dedup window absorbs it), eight times the one publishing is
// SIGKILLed and a fresh one started, and the consumer in the test applies
// the table's rows, in arrival order, to the count table. Every committed
// message must be applied exactly once, in seq order per entity, none
// rolled back; every outbox row sent with seqs 1..n per entity; every
// publish of an id after its first absorbed as a duplicate, and at least
// one such republish.
func TestRelaySIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash test starts relay processes")
	}
	t.Parallel()
	ctx := context.Background()
	pool, url, schema := pgcrashtest.Schema(t, "idem_relay_downstream")
	table := pgx.Identifier{schema, "downstream"}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{schema}.Sanitize()+`;
		CREATE TABLE `+table+` (arrival bigserial PRIMARY KEY, message_id text NOT NULL UNIQUE,
		headers jsonb NOT NULL, dups integer NOT NULL DEFAULT 0, consumed boolean NOT NULL DEFAULT false)`); err != nil {
		t.Fatal(err)
	}
	unconsumed := func() (n int) {
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE NOT consumed`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	res := pgcrashtest.RunRelay(t, &pgcrashtest.RelayTest{
		Broker:      url + "|" + table,
		Subject:     "orders",
		ChildTest:   "TestRelayChild",
		BrokerDedup: true,
		Consume: func(ctx context.Context, d *pgcrashtest.Downstream) error {
			// Rows commit out of arrival order (the relay's workers publish
			// concurrently), so each poll takes every row not yet consumed;
			// an entity's rows commit one after the other, in its order.
			for {
				rows, err := pool.Query(ctx, `SELECT arrival, message_id, headers FROM `+table+` WHERE NOT consumed ORDER BY arrival`)
				if err != nil {
					return err
				}
				type row struct {
					arrival int64
					m       *messaging.Message
				}
				var todo []row
				for rows.Next() {
					r := row{m: &messaging.Message{Delivery: 1}}
					if err := rows.Scan(&r.arrival, &r.m.ID, &r.m.Headers); err != nil {
						return err
					}
					todo = append(todo, r)
				}
				if err := rows.Err(); err != nil {
					return err
				}
				for _, r := range todo {
					if err := d.Apply(ctx, r.m); err != nil {
						return err
					}
					if _, err := pool.Exec(ctx, `UPDATE `+table+` SET consumed = true WHERE arrival = $1`, r.arrival); err != nil {
						return err
					}
					d.Settled(messaging.Decision{Action: messaging.Ack})
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(10 * time.Millisecond): // the next poll of the table
				}
			}
		},
		Drained: func() bool { return unconsumed() == 0 },
	})
	var dups int
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(dups), 0) FROM `+table).Scan(&dups); err != nil {
		t.Fatal(err)
	}
	if dups < res.Republishes {
		t.Errorf("the downstream absorbed %d duplicate publishes, want at least the %d republishes printed", dups, res.Republishes)
	}
	t.Logf("the downstream absorbed %d duplicate publishes", dups)
}
