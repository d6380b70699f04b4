package idemui

import (
	"errors"
	"maps"
	"net/http"
	"net/url"
	"slices"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/workflow"
)

// Workflow page bounds.
const (
	wfPageSize = 50
	// wfCountLimit bounds the instances read to count a type's instances
	// by status; beyond it the counts say "at least".
	wfCountLimit = 10000
)

var statuses = []workflow.Status{workflow.Running, workflow.Unwinding, workflow.Parked, workflow.Succeeded, workflow.Failed, workflow.Cancelled}

type typeCounts struct {
	Name     string
	Versions []int
	Counts   []int // by statuses
	States   []stateCount
	Capped   bool
}

// stateCount is how many unfinished instances are in a state.
type stateCount struct {
	State string
	N     int
}

type workflowsData struct {
	Enabled   bool
	Types     []typeCounts
	Statuses  []workflow.Status
	Type      string
	Status    string
	State     string
	Instances []*workflow.Instance
	After     string
	Next      string
}

// workflows serves the Workflows page: the types the token may use with
// their instances counted by status, and a filtered list of instances.
func (h *Handler) workflows(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	d := &workflowsData{Enabled: h.cfg.Workflows != nil, Statuses: statuses, Type: q.Get("type"), Status: q.Get("status"), State: q.Get("state"), After: q.Get("after")}
	pg := &page{Title: "Workflows", Data: d}
	if !d.Enabled {
		h.render(w, r, http.StatusOK, "workflows", pg, s)
		return
	}
	if !s.grant.AnyWorkflow() {
		pg.Flash = `This token is bound to no workflow type: bind it to "wf:TYPE" or "*".`
		h.render(w, r, http.StatusForbidden, "workflows", pg, s)
		return
	}
	if d.Type != "" && !s.grant.AllowsWorkflow(d.Type) {
		pg.Flash = "This token is not bound to workflow type " + d.Type + "."
		h.render(w, r, http.StatusForbidden, "workflows", pg, s)
		return
	}
	ctx := r.Context()
	for _, ti := range h.cfg.WorkflowTypes.Types() {
		if !s.grant.AllowsWorkflow(ti.Name) {
			continue
		}
		tc := typeCounts{Name: ti.Name, Versions: ti.Versions, Counts: make([]int, len(statuses))}
		byState := map[string]int{}
		after, n := "", 0
		for {
			res, err := h.cfg.Workflows.List(ctx, &workflow.ListParams{Type: ti.Name, After: after, Limit: 500})
			if err != nil {
				h.fail(w, r, s, http.StatusServiceUnavailable, "The workflow journal did not answer: try again.")
				return
			}
			for _, in := range res.Instances {
				if !in.Status.Finished() {
					byState[in.State]++
				}
				for i, st := range statuses {
					if in.Status == st {
						tc.Counts[i]++
					}
				}
			}
			n += len(res.Instances)
			if res.Next == "" {
				break
			}
			if n >= wfCountLimit {
				tc.Capped = true
				break
			}
			after = res.Next
		}
		for _, st := range slices.Sorted(maps.Keys(byState)) {
			tc.States = append(tc.States, stateCount{st, byState[st]})
		}
		d.Types = append(d.Types, tc)
	}
	res, err := h.cfg.Workflows.List(ctx, &workflow.ListParams{Type: d.Type, Status: workflow.Status(d.Status), State: d.State, After: d.After, Limit: wfPageSize})
	if err != nil {
		h.fail(w, r, s, http.StatusServiceUnavailable, "The workflow journal did not answer: try again.")
		return
	}
	for _, in := range res.Instances {
		if s.grant.AllowsWorkflow(in.Type) {
			d.Instances = append(d.Instances, in)
		}
	}
	d.Next = res.Next
	h.render(w, r, http.StatusOK, "workflows", pg, s)
}

type stepKey struct {
	Step, Action, Outcome string
	Attempts              int
}

type instanceData struct {
	In        *workflow.Instance
	Diagram   string
	Steps     []stepKey
	States    []string // where Resume may restart
	CanCancel bool
	CanRetry  bool
	CanResume bool
	Done      string
}

// instance serves an instance's page: its diagram with the path taken,
// its history and step keys, and the operator's buttons.
func (h *Handler) instance(w http.ResponseWriter, r *http.Request, s *session) {
	if h.cfg.Workflows == nil {
		h.fail(w, r, s, http.StatusNotFound, "This server runs no workflow engine.")
		return
	}
	in, ok := h.loadInstance(w, r, s, r.URL.Query().Get("id"))
	if !ok {
		return
	}
	d := &instanceData{In: in, Done: r.URL.Query().Get("done")}
	def, err := h.cfg.WorkflowTypes.Lookup(in.Type, in.Version)
	if err == nil {
		d.Diagram = diagram(def, in)
		for _, st := range def.States {
			if st.Terminal == workflow.NotTerminal {
				d.States = append(d.States, st.Name)
			}
		}
	}
	index := map[string]int{}
	for _, e := range in.History {
		if e.StepKey == "" {
			continue
		}
		i, seen := index[e.StepKey]
		if !seen {
			i = len(d.Steps)
			index[e.StepKey] = i
			d.Steps = append(d.Steps, stepKey{Step: e.StepKey, Action: e.Action})
		}
		switch e.Kind {
		case workflow.EntryActionStarted:
			d.Steps[i].Attempts++
			d.Steps[i].Outcome = "running"
		case workflow.EntryActionFailed, workflow.EntryCompensateFailed:
			d.Steps[i].Outcome = "failed"
		case workflow.EntryActionCompleted:
			d.Steps[i].Outcome = "completed"
			if e.Replayed {
				d.Steps[i].Outcome = "completed (replayed by the ledger)"
			}
		case workflow.EntryCompensated:
			d.Steps[i].Outcome = "compensated"
		}
	}
	d.CanCancel = !in.Status.Finished() && !in.CancelRequested && in.Status != workflow.Unwinding
	d.CanRetry = in.Status == workflow.Parked
	d.CanResume = (in.Status == workflow.Parked && in.ParkedFrom == workflow.Running) ||
		((in.Status == workflow.Failed || in.Status == workflow.Cancelled) && in.Undone == 0)
	h.render(w, r, http.StatusOK, "instance", &page{Title: "Workflow " + in.ID, Nav: "workflows", Data: d}, s)
}

// loadInstance reads instance id for a token that may use its type; an
// instance of another type is answered as unknown.
func (h *Handler) loadInstance(w http.ResponseWriter, r *http.Request, s *session, id string) (*workflow.Instance, bool) {
	if id == "" {
		h.fail(w, r, s, http.StatusBadRequest, "Name a workflow instance.")
		return nil, false
	}
	in, err := h.cfg.Workflows.Get(r.Context(), id)
	if errors.Is(err, idem.ErrNotFound) || err == nil && !s.grant.AllowsWorkflow(in.Type) {
		h.fail(w, r, s, http.StatusNotFound, "No workflow instance with this id that this token may see.")
		return nil, false
	}
	if err != nil {
		h.fail(w, r, s, http.StatusServiceUnavailable, "The workflow journal did not answer: try again.")
		return nil, false
	}
	return in, true
}

// wfAction runs an operator's action on the instance the form names.
func (h *Handler) wfAction(w http.ResponseWriter, r *http.Request, s *session, name string, do func(in *workflow.Instance) error) {
	if h.cfg.Workflows == nil {
		h.fail(w, r, s, http.StatusNotFound, "This server runs no workflow engine.")
		return
	}
	in, ok := h.loadInstance(w, r, s, r.PostForm.Get("id"))
	if !ok {
		return
	}
	if err := do(in); err != nil {
		status := http.StatusConflict
		if errors.Is(err, idem.ErrInvalid) {
			status = http.StatusBadRequest
		}
		h.fail(w, r, s, status, "The engine refused to "+name+" the instance: "+err.Error())
		return
	}
	h.log.Info("idemui: workflow "+name, "type", in.Type)
	http.Redirect(w, r, h.cfg.Prefix+"/workflows/instance?"+url.Values{"id": {in.ID}, "done": {name}}.Encode(), http.StatusSeeOther)
}

func (h *Handler) wfCancel(w http.ResponseWriter, r *http.Request, s *session) {
	h.wfAction(w, r, s, "cancel", func(in *workflow.Instance) error {
		return h.cfg.Workflows.Cancel(r.Context(), in.ID, "cancelled from the dashboard")
	})
}

func (h *Handler) wfRetry(w http.ResponseWriter, r *http.Request, s *session) {
	h.wfAction(w, r, s, "retry", func(in *workflow.Instance) error {
		return h.cfg.Workflows.Retry(r.Context(), in.ID)
	})
}

func (h *Handler) wfResume(w http.ResponseWriter, r *http.Request, s *session) {
	h.wfAction(w, r, s, "resume", func(in *workflow.Instance) error {
		return h.cfg.Workflows.Resume(r.Context(), in.ID, r.PostForm.Get("state"), "resumed from the dashboard")
	})
}
