//go:build !idem_declare

package main

import "github.com/idemkit/idem/workflow"

// Until the declare module is part of this build, idem reads no
// declarative documents: --workflows and POST /v1/workflow-types say so.
var (
	parseWorkflowDocument func(data []byte, name string) (*workflow.Definition, error)
	loadWorkflowDir       func(dir string) ([]*workflow.Definition, error)
)
