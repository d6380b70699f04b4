// Package uitest builds the dashboard's test world: a memory store with
// records made the way idem's own pieces make them (the HTTP middleware,
// a ledger, a messaging consumer), a workflow engine with instances, and
// rates with samples, behind the API and the dashboard mounted as idem
// serve mounts them. The Go tests of idemui and the browser tests use it.
package uitest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/idemui"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/workflow"
)

// The tokens of the fixture.
const (
	// OpsToken is bound to "*".
	OpsToken = "ops-token-0123456789"
	// BillingToken is bound to "billing", "messages" and "wf:order".
	BillingToken = "billing-token-0123456789"
	// ShopToken is bound to "shop" only.
	ShopToken = "shop-token-0123456789"
)

// Start is when the rates' clock and the sessions' clock start.
var Start = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// Fixture is the test world.
type Fixture struct {
	Store   *memstore.Store
	Ledger  *idem.Ledger
	Engine  *workflow.Engine
	Types   *workflow.Registry
	Rates   *idemui.Rates
	Clock   *idem.ManualClock // of the rates and the sessions
	UI      *idemui.Handler
	Handler http.Handler // /ui/ the dashboard, the rest the API
	Tokens  map[string][]string
}

// Options change the fixture.
type Options struct {
	KeySecret []byte
}

// OrderDefinition is the workflow type "order": pending -place/reserve->
// reserved -pay/charge-> charged (success), and reserved -give_up->
// abandoned (failure).
func OrderDefinition() *workflow.Definition {
	ok := func(context.Context, *workflow.Step) ([]byte, error) { return []byte(`{"ok":true}`), nil }
	return &workflow.Definition{
		Name: "order", Version: 1, Initial: "pending",
		States: []workflow.State{
			{Name: "pending"}, {Name: "reserved"},
			{Name: "charged", Terminal: workflow.Success}, {Name: "abandoned", Terminal: workflow.Failure},
		},
		Transitions: []workflow.Transition{
			{From: "pending", Event: "place", To: "reserved", Action: &workflow.Action{Name: "reserve", Run: ok, Compensate: ok}},
			{From: "reserved", Event: "pay", To: "charged", Action: &workflow.Action{Name: "charge", Run: ok, NoCompensation: true}},
			{From: "reserved", Event: "give_up", To: "abandoned"},
		},
	}
}

// New builds the fixture:
//
//   - billing/order-42: a response stored by idemhttp (201, X-Order: 42,
//     body {"order":42}); billing/order-43: pending with a checkpoint;
//     shop/cart-1: completed with data "cart";
//   - messages: msg-1 handled, msg-2 dead-lettered after a permanent
//     failure (one attempt recorded in messages/attempts);
//   - workflow "order": order-7 running in "reserved" (took place),
//     order-8 succeeded in "charged";
//   - rates: six samples of 10 s with begins, replays and completes.
func New(t testing.TB, o *Options) *Fixture {
	t.Helper()
	if o == nil {
		o = &Options{}
	}
	ctx := context.Background()
	f := &Fixture{Store: memstore.New(nil), Clock: idem.NewManualClock(Start), Types: workflow.NewRegistry()}
	t.Cleanup(func() { _ = f.Store.Close() })
	f.Rates = idemui.NewRates(&idemui.RatesConfig{Interval: 10 * time.Second, Keep: time.Hour, Clock: f.Clock})
	var err error
	f.Ledger, err = idem.New(f.Store, &idem.Config{Observer: f.Rates, KeySecret: o.KeySecret})
	if err != nil {
		t.Fatal(err)
	}
	f.Tokens = map[string][]string{
		OpsToken:     {idemapi.AllScopes},
		BillingToken: {"billing", "messages", "messages/attempts", idemapi.WorkflowScope("order")},
		ShopToken:    {"shop"},
	}

	// A response stored by the middleware, as idem serve's clients' are.
	mw := idemhttp.Middleware(f.Ledger, &idemhttp.Config{Scope: func(*http.Request) (string, error) { return "billing", nil }, StoredHeaders: []string{"Content-Type", "X-Order"}})
	app := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Order", "42")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"order":42}`)
	}))
	req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(`{"sku":"book"}`))
	req.Header.Set("Idempotency-Key", idemhttp.QuoteKey("order-42"))
	rec := httptest.NewRecorder()
	app.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		t.Fatalf("middleware answered %d", rec.Code)
	}
	// The middleware's scope is its principal, method and route; the
	// response it stored moves to billing/order-42 as it is.
	res, err := f.Store.List(ctx, &idem.ListParams{Scope: "7:billing POST /orders"})
	if err != nil || len(res.Records) != 1 || res.Records[0].Outcome == nil {
		t.Fatalf("the middleware's record: %v %v", res, err)
	}
	claim, err := f.Ledger.Begin(ctx, "billing", "order-42", res.Records[0].Fingerprint)
	if err != nil {
		t.Fatal(err)
	}
	if err := claim.Complete(ctx, *res.Records[0].Outcome); err != nil {
		t.Fatal(err)
	}
	claim, err = f.Ledger.Begin(ctx, "billing", "order-43", "fp-43", idem.WithLease(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := claim.SetCheckpoint(ctx, "charged", []byte(`{"charge":"ch_1"}`)); err != nil {
		t.Fatal(err)
	}
	claim, err = f.Ledger.Begin(ctx, "shop", "cart-1", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := claim.Complete(ctx, idem.Outcome{Data: []byte("cart")}); err != nil {
		t.Fatal(err)
	}

	// A consumer's records.
	con, err := messaging.NewConsumer(f.Ledger, func(_ context.Context, m *messaging.Message) error {
		if m.ID == "msg-2" {
			return messaging.Permanent(errors.New("no such account"))
		}
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"msg-1", "msg-2", "msg-1"} {
		con.Handle(ctx, &messaging.Message{ID: id, Subject: "orders", Payload: []byte(id)})
	}

	// Rates: six samples.
	for i := range 6 {
		for j := 0; j <= i; j++ {
			c, err := f.Ledger.Begin(ctx, "rates", "k", "")
			if err != nil {
				t.Fatal(err)
			}
			if !c.Replayed() {
				if err := c.Complete(ctx, idem.Outcome{}); err != nil {
					t.Fatal(err)
				}
			}
		}
		f.Clock.Advance(10 * time.Second)
		f.Rates.Sample()
	}

	// Workflows.
	if err := f.Types.Register(OrderDefinition()); err != nil {
		t.Fatal(err)
	}
	f.Engine, err = workflow.NewEngine(workflow.NewMemJournal(), f.Types, &workflow.EngineConfig{ID: "engine-1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"order-7", "order-8"} {
		if _, err := f.Engine.Start(ctx, "order", 0, id, []byte(`{}`), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Engine.Signal(ctx, id, id+"-place", "place", nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Engine.Signal(ctx, "order-8", "order-8-pay", "pay", nil); err != nil {
		t.Fatal(err)
	}
	f.Settle(t)

	f.UI, err = idemui.New(&idemui.Config{
		Store: f.Store, Tokens: f.Tokens, KeySecret: o.KeySecret, Rates: f.Rates,
		Workflows: f.Engine, WorkflowTypes: f.Types, Clock: f.Clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	api, err := idemapi.NewServer(f.Store, &idemapi.Config{Tokens: f.Tokens, KeySecret: o.KeySecret, Observer: f.Rates, Workflows: f.Engine, WorkflowTypes: f.Types})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ui/", f.UI)
	mux.Handle("/", api)
	f.Handler = mux
	return f
}

// Settle advances the workflow instances until none has work left.
func (f *Fixture) Settle(t testing.TB) {
	t.Helper()
	for range 100 {
		n, err := f.Engine.Step(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
	t.Fatal("the workflow instances never settled")
}
