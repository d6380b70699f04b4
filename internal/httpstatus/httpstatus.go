// Package httpstatus records the status an http.Handler writes, for the
// metrics, logs and spans of the servers that wrap their handlers.
package httpstatus

import "net/http"

// Recorder is an http.ResponseWriter that remembers the final status
// written through it: the first WriteHeader of 200 or above, or 200 at the
// first Write or Flush before any. Informational (1xx) statuses are not
// the final one and are passed on without being recorded. Flush and Unwrap
// keep streaming and http.ResponseController working through it.
type Recorder struct {
	http.ResponseWriter
	status int
}

// New returns a Recorder writing to w.
func New(w http.ResponseWriter) *Recorder { return &Recorder{ResponseWriter: w} }

// Status is the status written so far, 0 if none.
func (r *Recorder) Status() int { return r.status }

// WriteHeader passes code on, recording it if it is the first final status.
func (r *Recorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

// Write passes b on; without a status written, net/http sends 200.
func (r *Recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Flush flushes the underlying writer, if it can; without a status
// written, net/http sends 200.
func (r *Recorder) Flush() {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	_ = http.NewResponseController(r.ResponseWriter).Flush()
}

// Unwrap returns the underlying writer, for http.ResponseController.
func (r *Recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
