package main

import (
	"fmt"
	"io"
)

func runKeys(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "idem keys: not yet implemented")
	return 1
}
