package servicetest

import (
	"net"
	"strconv"
	"testing"
)

func TestFreePorts(t *testing.T) {
	low := ephemeralLow()
	for _, offset := range []int{0, 10000} {
		ports := FreePorts(t, 6, offset)
		if len(ports) != 6 {
			t.Fatalf("offset %d: got %d ports, want 6", offset, len(ports))
		}
		seen := map[int]bool{}
		for _, p := range ports {
			if p < lowestPort || p+offset >= low {
				t.Errorf("offset %d: port %d (and %d) not in [%d, %d)", offset, p, p+offset, lowestPort, low)
			}
			if seen[p] || seen[p+offset] {
				t.Errorf("offset %d: port %d given twice", offset, p)
			}
			seen[p], seen[p+offset] = true, true
			for _, q := range []int{p, p + offset} {
				l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(q))
				if err != nil {
					t.Errorf("offset %d: port %d is not free: %v", offset, q, err)
					continue
				}
				l.Close()
			}
		}
	}
}
