package httpstatus

import (
	"net/http"
	"slices"
	"testing"
	"time"
)

// sink is the writer under a Recorder: it keeps every call that reaches it.
type sink struct {
	header   http.Header
	codes    []int
	body     []byte
	flushes  int
	deadline time.Time
}

func (s *sink) Header() http.Header {
	if s.header == nil {
		s.header = http.Header{}
	}
	return s.header
}
func (s *sink) WriteHeader(code int) { s.codes = append(s.codes, code) }
func (s *sink) Write(b []byte) (int, error) {
	s.body = append(s.body, b...)
	return len(b), nil
}
func (s *sink) Flush()                             { s.flushes++ }
func (s *sink) SetWriteDeadline(t time.Time) error { s.deadline = t; return nil }

// unwrapper hides sink's methods but for those of http.ResponseWriter,
// offering it only through Unwrap.
type unwrapper struct{ http.ResponseWriter }

func (u unwrapper) Unwrap() http.ResponseWriter { return u.ResponseWriter }

func TestRecorderStatus(t *testing.T) {
	for _, tc := range []struct {
		name  string
		do    func(w http.ResponseWriter)
		want  int   // Status
		codes []int // WriteHeader calls that reach the sink
		body  string
	}{
		{"nothing", func(http.ResponseWriter) {}, 0, nil, ""},
		{"write", func(w http.ResponseWriter) { _, _ = w.Write([]byte("hi")) }, 200, nil, "hi"},
		{"header then write", func(w http.ResponseWriter) {
			w.WriteHeader(201)
			_, _ = w.Write([]byte("made"))
		}, 201, []int{201}, "made"},
		{"first final status stands", func(w http.ResponseWriter) {
			w.WriteHeader(404)
			w.WriteHeader(500)
		}, 404, []int{404, 500}, ""},
		{"1xx is not the status", func(w http.ResponseWriter) {
			w.WriteHeader(103)
			w.WriteHeader(204)
		}, 204, []int{103, 204}, ""},
		{"1xx then write", func(w http.ResponseWriter) {
			w.WriteHeader(100)
			_, _ = w.Write([]byte("x"))
		}, 200, []int{100}, "x"},
		{"flush", func(w http.ResponseWriter) { w.(http.Flusher).Flush() }, 200, nil, ""},
		{"header then flush", func(w http.ResponseWriter) {
			w.WriteHeader(202)
			w.(http.Flusher).Flush()
		}, 202, []int{202}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &sink{}
			r := New(s)
			tc.do(r)
			if got := r.Status(); got != tc.want {
				t.Errorf("Status() = %d, want %d", got, tc.want)
			}
			if !slices.Equal(s.codes, tc.codes) {
				t.Errorf("sink got WriteHeader %v, want %v", s.codes, tc.codes)
			}
			if string(s.body) != tc.body {
				t.Errorf("sink got body %q, want %q", s.body, tc.body)
			}
		})
	}
}

// TestRecorderController: http.ResponseController reaches the writer under
// a Recorder, and Flush reaches a flusher the writer under it only unwraps to.
func TestRecorderController(t *testing.T) {
	s := &sink{}
	r := New(unwrapper{s})
	rc := http.NewResponseController(r)
	if err := rc.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	at := time.Unix(1700000000, 0)
	if err := rc.SetWriteDeadline(at); err != nil {
		t.Fatalf("SetWriteDeadline: %v", err)
	}
	if s.flushes != 1 {
		t.Errorf("sink flushed %d times, want 1", s.flushes)
	}
	if !s.deadline.Equal(at) {
		t.Errorf("sink deadline %v, want %v", s.deadline, at)
	}
	if r.Status() != http.StatusOK {
		t.Errorf("Status() after Flush = %d, want 200", r.Status())
	}
	if r.Unwrap() != (unwrapper{s}) {
		t.Errorf("Unwrap did not return the wrapped writer")
	}
}
