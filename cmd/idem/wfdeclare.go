package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/idemkit/idem/workflow"
	"github.com/idemkit/idem/workflow/declare"
)

// parseWorkflowDocument reads one declarative document (JSON or YAML)
// into a definition whose actions are HTTP requests, with vars (from
// --workflow-var) over the document's own; its errors name lines and
// columns. loadWorkflowDir reads every document of a directory.
var (
	parseWorkflowDocument = func(data []byte, name string, vars map[string]string) (*workflow.Definition, error) {
		return declare.Parse(data, name, &declare.Options{Vars: vars})
	}
	loadWorkflowDir = func(dir string, vars map[string]string) ([]*workflow.Definition, error) {
		return declare.LoadDir(dir, &declare.Options{Vars: vars})
	}
)

// errWorkflowVar is a --workflow-var that is not NAME=VALUE.
var errWorkflowVar = errors.New("want NAME=VALUE")

// workflowVars is the repeatable --workflow-var NAME=VALUE: the values
// of {{vars.NAME}} in the declarative documents, over the documents' own
// vars (declare.Options.Vars). A later NAME wins over an earlier one.
type workflowVars map[string]string

func (v workflowVars) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(v)) {
		parts = append(parts, k+"="+v[k])
	}
	return strings.Join(parts, " ")
}

// Set adds one NAME=VALUE; the name is what follows "vars." in the
// documents, so it may not be empty or hold "=".
func (v workflowVars) Set(s string) error {
	name, value, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(name) == "" || strings.TrimSpace(name) != name {
		return fmt.Errorf("%q: %w", s, errWorkflowVar)
	}
	v[name] = value
	return nil
}
