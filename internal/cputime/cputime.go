// Package cputime reads the CPU time the process has used, for benchmarks
// that report CPU per operation beside throughput: on a shared machine it
// holds still where rates do not.
package cputime
