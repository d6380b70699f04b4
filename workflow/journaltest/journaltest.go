package journaltest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

// NewJournal returns a fresh, empty journal for one case; it registers its
// own cleanup with t.
type NewJournal func(t *testing.T) workflow.Journal

// Run runs every case against journals from newJournal, each case in
// parallel with a journal of its own.
func Run(t *testing.T, newJournal NewJournal) {
	cases := []struct {
		name string
		f    func(t *testing.T, j workflow.Journal)
	}{
		{"Create", testCreate},
		{"RoundTrip", testRoundTrip},
		{"Append", testAppend},
		{"Replace", testReplace},
		{"NotFound", testNotFound},
		{"List", testList},
		{"ListPaging", testListPaging},
		{"Delete", testDelete},
		{"Copies", testCopies},
		{"ConcurrentAppend", testConcurrentAppend},
		{"ConcurrentCreate", testConcurrentCreate},
		{"Cancelled", testCancelled},
		{"IDs", testIDs},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.f(t, newJournal(t))
		})
	}
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func create(t *testing.T, j workflow.Journal, in *workflow.Instance, entries ...workflow.Entry) *workflow.Instance {
	t.Helper()
	res, err := j.Create(context.Background(), &workflow.CreateParams{Instance: in, Entries: entries})
	if err != nil {
		t.Fatalf("Create(%q): %v", in.ID, err)
	}
	if !res.Created {
		t.Fatalf("Create(%q): Created false for a new id", in.ID)
	}
	return res.Instance
}

func get(t *testing.T, j workflow.Journal, id string) *workflow.Instance {
	t.Helper()
	res, err := j.Get(context.Background(), &workflow.GetParams{ID: id})
	if err != nil {
		t.Fatalf("Get(%q): %v", id, err)
	}
	return res.Instance
}

func kinds(in *workflow.Instance) string {
	var b strings.Builder
	for i, e := range in.History {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d:%s", e.Seq, e.Kind)
	}
	return b.String()
}

func testCreate(t *testing.T, j workflow.Journal) {
	ctx := context.Background()
	in := &workflow.Instance{ID: "a", Type: "order", Version: 1, Run: 1, Fingerprint: "f1", State: "pending", Status: workflow.Running, Input: []byte("in")}
	got := create(t, j, in, workflow.Entry{Kind: workflow.EntryStarted, At: t0}, workflow.Entry{Kind: workflow.EntryEventReceived, At: t0})
	if got.Seq != 1 || got.State != "pending" || string(got.Input) != "in" || kinds(got) != "1:started 2:event_received" {
		t.Fatalf("Create: seq %d state %q input %q history %q; want 1, pending, in, 1:started 2:event_received", got.Seq, got.State, got.Input, kinds(got))
	}
	// The same id with the same fingerprint: the stored instance, whatever
	// else the second request says.
	res, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f1", State: "other"},
		Entries: []workflow.Entry{{Kind: workflow.EntryStarted}}})
	if err != nil || res.Created || res.Instance.State != "pending" || string(res.Instance.Input) != "in" || kinds(res.Instance) != "1:started 2:event_received" {
		t.Fatalf("Create again: %+v, %v; want the stored instance, Created false", res, err)
	}
	if _, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f2"}}); !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Fatalf("Create with another fingerprint: %v; want ErrFingerprintMismatch", err)
	}
	if _, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: ""}}); !errors.Is(err, idem.ErrInvalid) {
		t.Fatalf("Create without an id: %v; want ErrInvalid", err)
	}
	if g := get(t, j, "a"); g.Seq != 1 || g.State != "pending" || kinds(g) != "1:started 2:event_received" {
		t.Fatalf("after refused creates: seq %d state %q history %q", g.Seq, g.State, kinds(g))
	}
}

// full is an instance with every field set, for round trips.
func full(id string) *workflow.Instance {
	return &workflow.Instance{
		ID: id, Type: "order", Version: 3, Run: 2, Input: []byte{0, 1, 2, 0xff}, Fingerprint: "fp",
		State: "reserved", Status: workflow.Unwinding, Steps: 7, Entered: 4,
		Pending: &workflow.PendingAction{Step: 7, Action: "charge", OnEnter: true, Event: "pay", EventID: "e9",
			From: "reserved", To: "charged", Input: []byte("pin"), Token: 5},
		Owner: "engine-a", Token: 6, LeaseUntil: t0.Add(30*time.Second + time.Nanosecond),
		Attempt: 2, NotBefore: t0.Add(time.Second + time.Nanosecond),
		Inbox:   []workflow.InboxEvent{{ID: "e10", Event: "cancel", Payload: []byte("why")}, {ID: "e11", Event: "pay"}},
		Seen:    []string{"e9", "e10", "e11"},
		Done:    []workflow.DoneAction{{Step: 3, Action: "reserve", Key: "k3", Input: []byte("i"), Result: []byte("r")}},
		Results: map[string][]byte{"reserve": []byte(`{"id":7}`), "check": {0, 0xff}},
		Undone:  1, EndStatus: workflow.Cancelled, ParkedFrom: workflow.Running,
		CancelRequested: true, CancelReason: "user", Error: "boom",
		TimeoutAt: t0.Add(15 * time.Minute), WakeAt: t0.Add(time.Minute),
		Created: t0, Updated: t0.Add(2 * time.Second), Finished: t0.Add(3 * time.Second),
	}
}

func fullEntry() workflow.Entry {
	return workflow.Entry{At: t0.Add(time.Millisecond), Kind: workflow.EntryActionFailed, Run: 2, State: "reserved",
		Event: "pay", EventID: "e9", From: "reserved", To: "charged", Action: "charge", StepKey: "a/7/charge",
		Token: 42, Attempt: 2, Replayed: true, Error: "boom", Reason: "why", Status: workflow.Running, Duration: 1500 * time.Millisecond}
}

// canon renders v as JSON with every time in UTC, so that two values
// equal up to time representation render the same.
func canon(t *testing.T, in *workflow.Instance) string {
	t.Helper()
	c := *in
	for _, p := range []*time.Time{&c.NotBefore, &c.TimeoutAt, &c.WakeAt, &c.Created, &c.Updated, &c.Finished} {
		*p = p.UTC()
	}
	c.History = nil
	for _, e := range in.History {
		e.At = e.At.UTC()
		c.History = append(c.History, e)
	}
	b, err := json.Marshal(&c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func testRoundTrip(t *testing.T, j workflow.Journal) {
	ctx := context.Background()
	in := full("rt")
	e := fullEntry()
	res, err := j.Create(ctx, &workflow.CreateParams{Instance: in, Entries: []workflow.Entry{e}})
	if err != nil {
		t.Fatal(err)
	}
	want := full("rt")
	want.Seq = 1
	we := fullEntry()
	we.Seq = 1
	want.History = []workflow.Entry{we}
	if got, w := canon(t, res.Instance), canon(t, want); got != w {
		t.Fatalf("Create returned\n%s\nwant\n%s", got, w)
	}
	if got, w := canon(t, get(t, j, "rt")), canon(t, want); got != w {
		t.Fatalf("Get returned\n%s\nwant\n%s", got, w)
	}
	// Append replaces every field, including clearing the ones now zero.
	next := &workflow.Instance{ID: "rt", Type: "order", Version: 3, Run: 2, Fingerprint: "fp", State: "charged", Status: workflow.Running, Seq: 1}
	if r, err := j.Append(ctx, &workflow.AppendParams{Instance: next, Entries: []workflow.Entry{e}}); err != nil || r.Seq != 2 {
		t.Fatalf("Append: %+v, %v; want Seq 2", r, err)
	}
	want = &workflow.Instance{ID: "rt", Type: "order", Version: 3, Run: 2, Fingerprint: "fp", State: "charged", Status: workflow.Running, Seq: 2}
	we2 := fullEntry()
	we2.Seq = 2
	want.History = []workflow.Entry{we, we2}
	if got, w := canon(t, get(t, j, "rt")), canon(t, want); got != w {
		t.Fatalf("Get after Append returned\n%s\nwant\n%s", got, w)
	}
	lr, err := j.List(ctx, &workflow.ListParams{})
	if err != nil || len(lr.Instances) != 1 {
		t.Fatalf("List: %+v, %v", lr, err)
	}
	want.History = nil
	if got, w := canon(t, lr.Instances[0]), canon(t, want); got != w {
		t.Fatalf("List returned\n%s\nwant\n%s", got, w)
	}
}

func testAppend(t *testing.T, j workflow.Journal) {
	ctx := context.Background()
	create(t, j, &workflow.Instance{ID: "a", Fingerprint: "f1", State: "pending", Status: workflow.Running}, workflow.Entry{Kind: workflow.EntryStarted})
	// Two writers read Seq 1: one wins, the other changes nothing.
	w1, w2 := get(t, j, "a"), get(t, j, "a")
	w1.State = "reserved"
	w2.State = "cancelled"
	w1.History, w2.History = nil, nil
	if r, err := j.Append(ctx, &workflow.AppendParams{Instance: w1, Entries: []workflow.Entry{{Kind: workflow.EntryTransition}, {Kind: workflow.EntryFinished}}}); err != nil || r.Seq != 2 {
		t.Fatalf("Append: %+v, %v; want Seq 2", r, err)
	}
	if _, err := j.Append(ctx, &workflow.AppendParams{Instance: w2, Entries: []workflow.Entry{{Kind: workflow.EntryParked}}}); !errors.Is(err, workflow.ErrConflict) {
		t.Fatalf("stale Append: %v; want ErrConflict", err)
	}
	g := get(t, j, "a")
	if g.State != "reserved" || g.Seq != 2 || kinds(g) != "1:started 2:transition 3:finished" {
		t.Fatalf("after Appends: state %q seq %d history %q; want reserved, 2, 1:started 2:transition 3:finished", g.State, g.Seq, kinds(g))
	}
	// An Append with no entries still moves Seq; the History field of the
	// instance passed is ignored.
	g.State = "charged"
	g.History = []workflow.Entry{{Kind: workflow.EntryRetried}}
	if r, err := j.Append(ctx, &workflow.AppendParams{Instance: g}); err != nil || r.Seq != 3 {
		t.Fatalf("Append without entries: %+v, %v; want Seq 3", r, err)
	}
	g = get(t, j, "a")
	if g.State != "charged" || g.Seq != 3 || kinds(g) != "1:started 2:transition 3:finished" {
		t.Fatalf("after an Append without entries: state %q seq %d history %q", g.State, g.Seq, kinds(g))
	}
	// A Seq ahead of the stored one is as stale as one behind.
	g.Seq = 9
	if _, err := j.Append(ctx, &workflow.AppendParams{Instance: g, Entries: []workflow.Entry{{Kind: workflow.EntryParked}}}); !errors.Is(err, workflow.ErrConflict) {
		t.Fatalf("Append at a future seq: %v; want ErrConflict", err)
	}
	if g := get(t, j, "a"); g.Seq != 3 || len(g.History) != 3 {
		t.Fatalf("a refused Append changed the instance: seq %d history %q", g.Seq, kinds(g))
	}
}

func testReplace(t *testing.T, j workflow.Journal) {
	ctx := context.Background()
	create(t, j, &workflow.Instance{ID: "a", Fingerprint: "f1", Run: 1, Status: workflow.Running}, workflow.Entry{Kind: workflow.EntryStarted})
	g := get(t, j, "a")
	g.Status = workflow.Succeeded
	if _, err := j.Append(ctx, &workflow.AppendParams{Instance: g, Entries: []workflow.Entry{{Kind: workflow.EntryFinished}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f3", Run: 2}, Replace: true, ReplaceSeq: 1}); !errors.Is(err, workflow.ErrConflict) {
		t.Fatalf("Replace at a stale seq: %v; want ErrConflict", err)
	}
	if _, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "new", Fingerprint: "f3"}, Replace: true, ReplaceSeq: 1}); !errors.Is(err, workflow.ErrConflict) {
		t.Fatalf("Replace of nothing: %v; want ErrConflict", err)
	}
	if _, err := j.Get(ctx, &workflow.GetParams{ID: "new"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("a refused Replace created the instance: %v", err)
	}
	res, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f3", Run: 2, Status: workflow.Running}, Replace: true, ReplaceSeq: 2,
		Entries: []workflow.Entry{{Kind: workflow.EntryStarted, Run: 2}}})
	if err != nil || !res.Created || res.Instance.Seq != 3 || res.Instance.Run != 2 || res.Instance.Fingerprint != "f3" || kinds(res.Instance) != "1:started 2:finished 3:started" {
		t.Fatalf("Replace: %+v, %v; want Created, Seq 3, Run 2, history 1:started 2:finished 3:started", res, err)
	}
	if g := get(t, j, "a"); g.Seq != 3 || g.Status != workflow.Running || g.Fingerprint != "f3" || kinds(g) != "1:started 2:finished 3:started" {
		t.Fatalf("after Replace: seq %d status %s fingerprint %q history %q", g.Seq, g.Status, g.Fingerprint, kinds(g))
	}
	// The new run answers plain Creates by its own fingerprint.
	if _, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "a", Fingerprint: "f1"}}); !errors.Is(err, idem.ErrFingerprintMismatch) {
		t.Fatalf("Create with the first run's fingerprint: %v; want ErrFingerprintMismatch", err)
	}
}

func testNotFound(t *testing.T, j workflow.Journal) {
	ctx := context.Background()
	if _, err := j.Get(ctx, &workflow.GetParams{ID: "zz"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("Get of nothing: %v; want ErrNotFound", err)
	}
	if _, err := j.Append(ctx, &workflow.AppendParams{Instance: &workflow.Instance{ID: "zz", Seq: 1}, Entries: []workflow.Entry{{Kind: workflow.EntryStarted}}}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("Append to nothing: %v; want ErrNotFound", err)
	}
	if _, err := j.Get(ctx, &workflow.GetParams{ID: "zz"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("Append to nothing created it: %v", err)
	}
	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "zz", Seq: 1}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("Delete of nothing: %v; want ErrNotFound", err)
	}
	if r, err := j.List(ctx, &workflow.ListParams{}); err != nil || len(r.Instances) != 0 || r.Next != "" {
		t.Fatalf("List of an empty journal: %+v, %v", r, err)
	}
}

func listIDs(t *testing.T, j workflow.Journal, p *workflow.ListParams) string {
	t.Helper()
	r, err := j.List(context.Background(), p)
	if err != nil {
		t.Fatalf("List(%+v): %v", p, err)
	}
	var ids []string
	for _, x := range r.Instances {
		if x.History != nil {
			t.Fatalf("List(%+v) returned a history for %q", p, x.ID)
		}
		if x.Seq < 1 {
			t.Fatalf("List(%+v) returned %q with Seq %d", p, x.ID, x.Seq)
		}
		ids = append(ids, x.ID)
	}
	return "[" + strings.Join(ids, " ") + "] next=" + r.Next
}

func testList(t *testing.T, j workflow.Journal) {
	for _, x := range []*workflow.Instance{
		{ID: "d", Type: "refund", State: "pending", Status: workflow.Running, WakeAt: t0.Add(time.Hour)},
		{ID: "a", Type: "order", State: "shipped", Status: workflow.Succeeded, Finished: t0.Add(time.Second)},
		{ID: "c", Type: "order", State: "shipped", Status: workflow.Succeeded, Finished: t0},
		{ID: "b", Type: "order", State: "pending", Status: workflow.Running, WakeAt: t0},
		{ID: "e", Type: "order", State: "charged", Status: workflow.Parked, Finished: t0}, // not finished: FinishedBefore skips it
		{ID: "f", Type: "order", State: "cancelled", Status: workflow.Cancelled, Finished: t0.Add(-time.Hour), WakeAt: t0.Add(-time.Hour)},
	} {
		x.Fingerprint = "f"
		create(t, j, x, workflow.Entry{Kind: workflow.EntryStarted})
	}
	for _, c := range []struct {
		p    workflow.ListParams
		want string
	}{
		{workflow.ListParams{}, "[a b c d e f] next="},
		{workflow.ListParams{Type: "order"}, "[a b c e f] next="},
		{workflow.ListParams{Type: "order", State: "pending"}, "[b] next="},
		{workflow.ListParams{State: "shipped"}, "[a c] next="},
		{workflow.ListParams{Status: workflow.Running}, "[b d] next="},
		{workflow.ListParams{Status: workflow.Parked}, "[e] next="},
		{workflow.ListParams{Type: "nothing"}, "[] next="},
		{workflow.ListParams{Due: t0.Add(-time.Minute)}, "[f] next="},
		{workflow.ListParams{Due: t0}, "[b f] next="},
		{workflow.ListParams{Due: t0.Add(time.Hour)}, "[b d f] next="},
		{workflow.ListParams{Due: t0.Add(time.Hour), Status: workflow.Running}, "[b d] next="},
		{workflow.ListParams{FinishedBefore: t0}, "[f] next="},
		{workflow.ListParams{FinishedBefore: t0.Add(time.Second)}, "[c f] next="},
		{workflow.ListParams{FinishedBefore: t0.Add(time.Hour)}, "[a c f] next="},
		{workflow.ListParams{FinishedBefore: t0.Add(time.Hour), Status: workflow.Succeeded}, "[a c] next="},
	} {
		if got := listIDs(t, j, &c.p); got != c.want {
			t.Errorf("List(%+v) = %s, want %s", c.p, got, c.want)
		}
	}
	// An Append moves an instance between filters.
	b := get(t, j, "b")
	b.State, b.Status, b.WakeAt, b.Finished = "shipped", workflow.Succeeded, time.Time{}, t0
	if _, err := j.Append(context.Background(), &workflow.AppendParams{Instance: b}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		p    workflow.ListParams
		want string
	}{
		{workflow.ListParams{Status: workflow.Running}, "[d] next="},
		{workflow.ListParams{State: "shipped"}, "[a b c] next="},
		{workflow.ListParams{Due: t0}, "[f] next="},
		{workflow.ListParams{FinishedBefore: t0.Add(time.Second)}, "[b c f] next="},
	} {
		if got := listIDs(t, j, &c.p); got != c.want {
			t.Errorf("after Append: List(%+v) = %s, want %s", c.p, got, c.want)
		}
	}
}

func testListPaging(t *testing.T, j workflow.Journal) {
	for i := range 25 {
		typ := "even"
		if i%2 == 1 {
			typ = "odd"
		}
		create(t, j, &workflow.Instance{ID: fmt.Sprintf("i%02d", i), Type: typ, Fingerprint: "f"})
	}
	if got := listIDs(t, j, &workflow.ListParams{Limit: 2}); got != "[i00 i01] next=i01" {
		t.Errorf("first page: %s", got)
	}
	if got := listIDs(t, j, &workflow.ListParams{Limit: 2, After: "i01"}); got != "[i02 i03] next=i03" {
		t.Errorf("second page: %s", got)
	}
	if got := listIDs(t, j, &workflow.ListParams{Limit: 3, After: "i21"}); got != "[i22 i23 i24] next=" {
		t.Errorf("last full page: %s", got)
	}
	if got := listIDs(t, j, &workflow.ListParams{After: "i24"}); got != "[] next=" {
		t.Errorf("after the last: %s", got)
	}
	if got := listIDs(t, j, &workflow.ListParams{After: "i1"}); !strings.HasPrefix(got, "[i10 i11 ") {
		t.Errorf("after a prefix of ids: %s", got)
	}
	// Pages of a filtered list: every odd id once, in order.
	var seen []string
	after := ""
	for range 20 {
		r, err := j.List(context.Background(), &workflow.ListParams{Type: "odd", Limit: 5, After: after})
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range r.Instances {
			seen = append(seen, x.ID)
		}
		if r.Next == "" {
			break
		}
		after = r.Next
	}
	var want []string
	for i := 1; i < 25; i += 2 {
		want = append(want, fmt.Sprintf("i%02d", i))
	}
	if strings.Join(seen, " ") != strings.Join(want, " ") {
		t.Errorf("odd pages: %v, want %v", seen, want)
	}
	// Limit 0 means 100.
	for i := 25; i < 120; i++ {
		create(t, j, &workflow.Instance{ID: fmt.Sprintf("i%03d", i), Fingerprint: "f"})
	}
	r, err := j.List(context.Background(), &workflow.ListParams{})
	if err != nil || len(r.Instances) != 100 || r.Next != r.Instances[99].ID {
		t.Fatalf("List without a limit: %d instances, next %q, %v; want 100 and the last one's id", len(r.Instances), r.Next, err)
	}
}

func testDelete(t *testing.T, j workflow.Journal) {
	ctx := context.Background()
	create(t, j, &workflow.Instance{ID: "c", Fingerprint: "f1"}, workflow.Entry{Kind: workflow.EntryStarted}, workflow.Entry{Kind: workflow.EntryFinished})
	create(t, j, &workflow.Instance{ID: "d", Fingerprint: "f1"}, workflow.Entry{Kind: workflow.EntryStarted})
	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "c", Seq: 2}); !errors.Is(err, workflow.ErrConflict) {
		t.Fatalf("Delete at a stale seq: %v; want ErrConflict", err)
	}
	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "c", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Get(ctx, &workflow.GetParams{ID: "c"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("Get after Delete: %v; want ErrNotFound", err)
	}
	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "c", Seq: 1}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("Delete twice: %v; want ErrNotFound", err)
	}
	if got := listIDs(t, j, &workflow.ListParams{}); got != "[d] next=" {
		t.Fatalf("List after Delete: %s", got)
	}
	// The id is free again, with a fresh history: the old one went too.
	got := create(t, j, &workflow.Instance{ID: "c", Fingerprint: "other"}, workflow.Entry{Kind: workflow.EntryStarted})
	if got.Seq != 1 || kinds(got) != "1:started" {
		t.Fatalf("Create after Delete: seq %d history %q; want 1, 1:started", got.Seq, kinds(got))
	}
	if g := get(t, j, "d"); g.Seq != 1 || kinds(g) != "1:started" {
		t.Fatalf("Delete of c changed d: seq %d history %q", g.Seq, kinds(g))
	}
}

func testCopies(t *testing.T, j workflow.Journal) {
	ctx := context.Background()
	in := full("a")
	entries := []workflow.Entry{{Kind: workflow.EntryStarted, Error: "e"}}
	res, err := j.Create(ctx, &workflow.CreateParams{Instance: in, Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	want := canon(t, get(t, j, "a"))
	// Change what was passed in and what came back.
	in.Input[0], in.Pending.Input[0], in.Inbox[0].Payload[0], in.Seen[0], in.Done[0].Result[0] = 'X', 'X', 'X', "X", 'X'
	in.State = "X"
	entries[0].Error = "X"
	r := res.Instance
	r.Input[0], r.Pending.Input[0], r.Inbox[0].Payload[0], r.Seen[0], r.Done[0].Result[0] = 'Y', 'Y', 'Y', "Y", 'Y'
	r.History[0].Error = "Y"
	r.State = "Y"
	g := get(t, j, "a")
	if got := canon(t, g); got != want {
		t.Fatalf("changing Create's values changed the journal:\n%s\nwant\n%s", got, want)
	}
	g.Input[0], g.Pending.Input[0], g.Inbox[0].Payload[0], g.Seen[0], g.Done[0].Result[0] = 'Z', 'Z', 'Z', "Z", 'Z'
	g.History[0].Error = "Z"
	if got := canon(t, get(t, j, "a")); got != want {
		t.Fatalf("changing Get's value changed the journal:\n%s\nwant\n%s", got, want)
	}
	lr, err := j.List(ctx, &workflow.ListParams{})
	if err != nil || len(lr.Instances) != 1 {
		t.Fatalf("List: %+v, %v", lr, err)
	}
	lr.Instances[0].Input[0], lr.Instances[0].Seen[0] = 'W', "W"
	if got := canon(t, get(t, j, "a")); got != want {
		t.Fatalf("changing List's value changed the journal:\n%s\nwant\n%s", got, want)
	}
	// Append's instance, changed after the Append.
	next := get(t, j, "a")
	next.History = nil
	next.State = "charged"
	ae := []workflow.Entry{{Kind: workflow.EntryTransition, Error: "t"}}
	if _, err := j.Append(ctx, &workflow.AppendParams{Instance: next, Entries: ae}); err != nil {
		t.Fatal(err)
	}
	want = canon(t, get(t, j, "a"))
	next.Input[0], next.Seen[0], next.State = 'V', "V", "V"
	ae[0].Error = "V"
	if got := canon(t, get(t, j, "a")); got != want {
		t.Fatalf("changing Append's values changed the journal:\n%s\nwant\n%s", got, want)
	}
}

func testConcurrentAppend(t *testing.T, j workflow.Journal) {
	ctx := context.Background()
	const ids, writers, rounds = 4, 8, 20
	for i := range ids {
		create(t, j, &workflow.Instance{ID: fmt.Sprint("c", i), Fingerprint: "f"}, workflow.Entry{Kind: workflow.EntryStarted})
	}
	for round := range rounds {
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins := map[string][]int{}
		ready := make(chan struct{}) // released together, so the Appends overlap
		for i := range ids {
			id := fmt.Sprint("c", i)
			base := get(t, j, id)
			for w := range writers {
				in := *base
				in.History = nil
				in.State = fmt.Sprint("w", w)
				wg.Go(func() {
					<-ready
					_, err := j.Append(ctx, &workflow.AppendParams{Instance: &in, Entries: []workflow.Entry{
						{Kind: workflow.EntryTransition, State: in.State}, {Kind: workflow.EntryFinished, State: in.State}}})
					switch {
					case err == nil:
						mu.Lock()
						wins[id] = append(wins[id], w)
						mu.Unlock()
					case !errors.Is(err, workflow.ErrConflict):
						t.Errorf("Append: %v; want nil or ErrConflict", err)
					}
				})
			}
		}
		close(ready)
		wg.Wait()
		for i := range ids {
			id := fmt.Sprint("c", i)
			if len(wins[id]) != 1 {
				t.Fatalf("round %d: %d Appends to %q at one Seq won; want exactly 1", round, len(wins[id]), id)
			}
			g := get(t, j, id)
			w := fmt.Sprint("w", wins[id][0])
			n := len(g.History)
			if g.Seq != int64(round+2) || g.State != w || n != 1+2*(round+1) || g.History[n-1].State != w || g.History[n-2].State != w {
				t.Fatalf("round %d: %q has seq %d state %q and %d entries; want %d, %s (the winner's), %d, the last two the winner's",
					round, id, g.Seq, g.State, n, round+2, w, 1+2*(round+1))
			}
			for k, e := range g.History {
				if e.Seq != int64(k+1) {
					t.Fatalf("round %d: %q entry %d has Seq %d", round, id, k, e.Seq)
				}
			}
		}
	}
}

func testConcurrentCreate(t *testing.T, j workflow.Journal) {
	ctx := context.Background()
	const n = 8
	var wg sync.WaitGroup
	var created, mismatched, same int
	var mu sync.Mutex
	ready := make(chan struct{})
	for w := range n {
		fp := "f"
		if w%2 == 1 {
			fp = "g"
		}
		wg.Go(func() {
			<-ready
			res, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "x", Fingerprint: fp}, Entries: []workflow.Entry{{Kind: workflow.EntryStarted}}})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, idem.ErrFingerprintMismatch):
				mismatched++
			case err != nil:
				t.Errorf("Create: %v", err)
			case res.Created:
				created++
			default:
				same++
			}
		})
	}
	close(ready)
	wg.Wait()
	if created != 1 || same != n/2-1 || mismatched != n/2 {
		t.Fatalf("concurrent Creates: %d created, %d returned the existing instance, %d mismatched; want 1, %d, %d", created, same, mismatched, n/2-1, n/2)
	}
	if g := get(t, j, "x"); g.Seq != 1 || kinds(g) != "1:started" {
		t.Fatalf("after concurrent Creates: seq %d history %q; want 1, 1:started", g.Seq, kinds(g))
	}
}

func testCancelled(t *testing.T, j workflow.Journal) {
	create(t, j, &workflow.Instance{ID: "a", Fingerprint: "f"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := j.Create(ctx, &workflow.CreateParams{Instance: &workflow.Instance{ID: "b", Fingerprint: "f"}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Create: %v; want context.Canceled", err)
	}
	if _, err := j.Get(ctx, &workflow.GetParams{ID: "a"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Get: %v; want context.Canceled", err)
	}
	if _, err := j.Append(ctx, &workflow.AppendParams{Instance: &workflow.Instance{ID: "a", Seq: 1}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Append: %v; want context.Canceled", err)
	}
	if _, err := j.List(ctx, &workflow.ListParams{}); !errors.Is(err, context.Canceled) {
		t.Errorf("List: %v; want context.Canceled", err)
	}
	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "a", Seq: 1}); !errors.Is(err, context.Canceled) {
		t.Errorf("Delete: %v; want context.Canceled", err)
	}
	if g := get(t, j, "a"); g.Seq != 1 {
		t.Fatalf("cancelled calls changed the instance: seq %d", g.Seq)
	}
	if _, err := j.Get(context.Background(), &workflow.GetParams{ID: "b"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("a cancelled Create created: %v", err)
	}
}

// testIDs: ids that are prefixes of one another, or hold separators and
// non-ASCII letters, keep their own histories and list in byte order.
func testIDs(t *testing.T, j workflow.Journal) {
	ctx := context.Background()
	ids := []string{"ab", "a", "é", "a/b", "Z", "a b", "a/"}
	for i, id := range ids {
		var entries []workflow.Entry
		for range i + 1 {
			entries = append(entries, workflow.Entry{Kind: workflow.EntryStarted, Reason: id})
		}
		create(t, j, &workflow.Instance{ID: id, Fingerprint: "f"}, entries...)
	}
	if got, want := listIDs(t, j, &workflow.ListParams{}), "[Z a a b a/ a/b ab é] next="; got != want {
		t.Fatalf("List = %s, want %s (byte order)", got, want)
	}
	if got, want := listIDs(t, j, &workflow.ListParams{After: "a", Limit: 2}), "[a b a/] next=a/"; got != want {
		t.Fatalf("List after a = %s, want %s", got, want)
	}
	check := func() {
		t.Helper()
		for i, id := range ids {
			g, err := j.Get(ctx, &workflow.GetParams{ID: id})
			if errors.Is(err, idem.ErrNotFound) && id == "a" {
				continue
			}
			if err != nil {
				t.Fatalf("Get(%q): %v", id, err)
			}
			if len(g.Instance.History) != i+1 {
				t.Fatalf("%q has %d entries, want %d", id, len(g.Instance.History), i+1)
			}
			for _, e := range g.Instance.History {
				if e.Reason != id {
					t.Fatalf("%q has an entry of %q", id, e.Reason)
				}
			}
		}
	}
	check()
	if _, err := j.Delete(ctx, &workflow.DeleteParams{ID: "a", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	check() // the others' histories stayed
}
