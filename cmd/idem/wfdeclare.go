package main

import (
	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/declare"
)

// parseWorkflowDocument reads one declarative document (JSON or YAML)
// into a definition whose actions are HTTP requests; its errors name
// lines and columns. loadWorkflowDir reads every document of a directory.
var (
	parseWorkflowDocument = func(data []byte, name string) (*workflow.Definition, error) {
		return declare.Parse(data, name, nil)
	}
	loadWorkflowDir = func(dir string) ([]*workflow.Definition, error) {
		return declare.LoadDir(dir, nil)
	}
)
