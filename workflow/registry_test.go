package workflow_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem/workflow"
)

func TestRegistry(t *testing.T) {
	t.Parallel()
	var reg workflow.Registry
	if err := reg.Register(orderSaga()); err != nil {
		t.Fatal(err)
	}

	// The same structure again, with other functions, changes nothing.
	again := orderSaga()
	called := false
	again.Transitions[0].Action.Run = func(context.Context, *workflow.Step) ([]byte, error) { called = true; return nil, nil }
	if err := reg.Register(again); err != nil {
		t.Fatalf("identical re-register: %v", err)
	}
	d, err := reg.Lookup("order", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Transitions[0].Action.Run(context.Background(), &workflow.Step{}); err != nil || called {
		t.Errorf("re-register replaced the first functions (called=%v)", called)
	}

	// A different structure under the same version is refused.
	changed := orderSaga()
	changed.States[1].Timeout = 30 * time.Minute
	if err := reg.Register(changed); !errors.Is(err, workflow.ErrVersionConflict) {
		t.Fatalf("conflicting re-register = %v, want ErrVersionConflict", err)
	}
	if d, _ := reg.Lookup("order", 1); d.States[1].Timeout != 15*time.Minute {
		t.Errorf("conflicting register changed version 1")
	}

	// A new version registers beside the old.
	changed.Version = 2
	if err := reg.Register(changed); err != nil {
		t.Fatal(err)
	}
	v1, err1 := reg.Lookup("order", 1)
	v2, err2 := reg.Lookup("order", 2)
	latest, err3 := reg.Latest("order")
	if err1 != nil || err2 != nil || err3 != nil || v1.Version != 1 || v2.Version != 2 || latest.Version != 2 {
		t.Fatalf("Lookup v1 = %v %v, v2 = %v %v, Latest = %v %v", v1, err1, v2, err2, latest, err3)
	}

	// Another type, and an invalid definition that is refused.
	other := small()
	if err := reg.Register(other); err != nil {
		t.Fatal(err)
	}
	bad := small()
	bad.Name, bad.Initial = "bad", "nowhere"
	if err := reg.Register(bad); !errors.Is(err, workflow.ErrInvalidDefinition) {
		t.Fatalf("invalid register = %v, want ErrInvalidDefinition", err)
	}
	if err := reg.Register(nil); !errors.Is(err, workflow.ErrInvalidDefinition) {
		t.Fatalf("Register(nil) = %v", err)
	}

	want := []workflow.TypeInfo{{Name: "order", Versions: []int{1, 2}}, {Name: "t", Versions: []int{1}}}
	if got := reg.Types(); !reflect.DeepEqual(got, want) {
		t.Errorf("Types() = %+v, want %+v", got, want)
	}
	if _, err := reg.Lookup("order", 3); !errors.Is(err, workflow.ErrNotRegistered) || err.Error() != `workflow: definition not registered: "order" version 3` {
		t.Errorf("Lookup(order, 3) = %v", err)
	}
	if _, err := reg.Latest("bad"); !errors.Is(err, workflow.ErrNotRegistered) || err.Error() != `workflow: definition not registered: "bad"` {
		t.Errorf("Latest(bad) = %v", err)
	}
}

// Register keeps a copy: changing the caller's definition afterwards
// changes nothing registered.
func TestRegistryCopies(t *testing.T) {
	t.Parallel()
	reg := workflow.NewRegistry()
	d := orderSaga()
	if err := reg.Register(d); err != nil {
		t.Fatal(err)
	}
	fp := d.Fingerprint()
	d.States[0].Name = "changed"
	d.Transitions[2].Action.Retry.MaxAttempts = 99
	d.Transitions = append(d.Transitions[:1], d.Transitions[2:]...)
	got, _ := reg.Lookup("order", 1)
	if got.Fingerprint() != fp || got.States[0].Name != "pending" || got.Transitions[2].Action.Retry.MaxAttempts != 5 {
		t.Errorf("registered definition changed with the caller's")
	}
}

func TestRegistryConcurrent(t *testing.T) {
	t.Parallel()
	var reg workflow.Registry
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Go(func() {
			for v := 1; v <= 8; v++ {
				d := orderSaga()
				d.Version = v
				if err := reg.Register(d); err != nil {
					errs <- err
				}
				if _, err := reg.Latest("order"); err != nil {
					errs <- err
				}
				_ = reg.Types()
			}
			d := small()
			d.Name = fmt.Sprint("t", g)
			if err := reg.Register(d); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	types := reg.Types()
	if len(types) != 9 || !reflect.DeepEqual(types[0].Versions, []int{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Errorf("Types() = %+v", types)
	}
}

// The fingerprint covers every structural field and no function.
func TestFingerprint(t *testing.T) {
	t.Parallel()
	base := orderSaga().Fingerprint()
	if len(base) != 64 {
		t.Fatalf("fingerprint %q is not hex SHA-256", base)
	}
	same := orderSaga()
	same.Transitions[0].Action.Run = nil
	same.Transitions[0].Action.Compensate = func(context.Context, *workflow.Step) ([]byte, error) { return []byte("x"), nil }
	same.Transitions[2].Action.Retry.Retryable = func(error) bool { return false }
	if same.Fingerprint() != base {
		t.Errorf("fingerprint depends on functions")
	}
	changes := map[string]func(d *workflow.Definition){
		"name":          func(d *workflow.Definition) { d.Name = "order2" },
		"version":       func(d *workflow.Definition) { d.Version = 2 },
		"initial":       func(d *workflow.Definition) { d.Initial = "reserved" },
		"state name":    func(d *workflow.Definition) { d.States[2].Name = "paid" },
		"terminal":      func(d *workflow.Definition) { d.States[5].Terminal = workflow.Success },
		"timeout":       func(d *workflow.Definition) { d.States[1].Timeout++ },
		"timeout event": func(d *workflow.Definition) { d.States[1].TimeoutEvent = "x" },
		"on enter":      func(d *workflow.Definition) { d.States[4].OnEnter = nil },
		"transition":    func(d *workflow.Definition) { d.Transitions[1].To = "cancelled" },
		"event":         func(d *workflow.Definition) { d.Transitions[1].Event = "none_left" },
		"action name":   func(d *workflow.Definition) { d.Transitions[0].Action.Name = "reserve" },
		"no compensation": func(d *workflow.Definition) {
			d.Transitions[0].Action.Compensate, d.Transitions[0].Action.NoCompensation = nil, true
		},
		"retry":         func(d *workflow.Definition) { d.Transitions[2].Action.Retry.Jitter = 0.3 },
		"retry removed": func(d *workflow.Definition) { d.Transitions[2].Action.Retry = nil },
		"on exhausted":  func(d *workflow.Definition) { d.Transitions[2].Action.OnExhausted = workflow.Park },
		"order":         func(d *workflow.Definition) { d.States[0], d.States[1] = d.States[1], d.States[0] },
	}
	seen := map[string]string{base: "base"}
	for name, change := range changes {
		d := orderSaga()
		change(d)
		fp := d.Fingerprint()
		if prev, dup := seen[fp]; dup {
			t.Errorf("change %q has the fingerprint of %q", name, prev)
		}
		seen[fp] = name
	}
}
