package servicetest

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// lowestPort is where FreePorts starts looking: above the ports services
// are usually configured on.
const lowestPort = 10000

// FreePorts returns n loopback ports that were free a moment ago, each with
// port+offset free too (a Redis Cluster node's bus port is port+10000; pass
// 0 for none). The ports lie below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), so that no outgoing connection of this
// or another process can take one between the check and the server's bind,
// or while a test has killed the server that held it and restarts it.
func FreePorts(t testing.TB, n, offset int) []int {
	t.Helper()
	high := ephemeralLow() - offset // exclusive
	if high-lowestPort < 100*n {
		t.Fatalf("FreePorts: no room below the ephemeral range (%d) for %d ports with offset %d", ephemeralLow(), n, offset)
	}
	var ports []int
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	taken := map[int]bool{}
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			t.Fatalf("FreePorts: found %d free ports of %d", len(ports), n)
		}
		p := lowestPort + rand.IntN(high-lowestPort)
		if taken[p] || taken[p+offset] {
			continue
		}
		a, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		held = append(held, a)
		if offset != 0 {
			b, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+offset))
			if err != nil {
				continue // a stays held until return, so it is not picked again
			}
			held = append(held, b)
			taken[p+offset] = true
		}
		taken[p] = true
		ports = append(ports, p)
	}
	return ports
}

// ephemeralLow is the first port of the kernel's ephemeral range: 32768
// where it cannot be read (Linux's default).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > lowestPort {
				return v
			}
		}
	}
	return 32768
}
