//go:build !idemengine

package dbosbench

import "testing"

// idemSystems is empty until the engine's new API lands.
func idemSystems(testing.TB, *pgServer) []*system { return nil }
