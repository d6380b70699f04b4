package loadgen

import (
	"strconv"
	"testing"
)

// TestRequests: each mode's request is the POST request() writes, with its
// key, and building one allocates nothing, so no mode's load generator
// costs more than bare's.
func TestRequests(t *testing.T) {
	const host = "127.0.0.1:1"
	c := &client{}
	for _, mode := range []Mode{Bare, First, Replay} {
		l := newLoad(host, mode, "p-")
		for _, n := range []int64{1, 42, 1234567} {
			want, wantReplayed := request(host, ""), ""
			switch mode {
			case First:
				want, wantReplayed = request(host, "p-"+strconv.FormatInt(n, 10)), "false"
			case Replay:
				want, wantReplayed = request(host, "p-replay"), "true"
			}
			got, replayed := l.request(c, n)
			if string(got) != string(want) || replayed != wantReplayed {
				t.Errorf("%s request %d:\n%q, %q\nwant\n%q, %q", mode, n, got, replayed, want, wantReplayed)
			}
		}
		if a := testing.AllocsPerRun(100, func() { l.request(c, 987654) }); a != 0 {
			t.Errorf("%s: building a request allocates %v times, want 0", mode, a)
		}
	}
}
