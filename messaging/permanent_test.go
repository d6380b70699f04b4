package messaging_test

import (
	"errors"
	"testing"

	"github.com/idemkit/idem/messaging"
	"github.com/idemkit/idem/workflow"
)

// messaging.Permanent and workflow.Permanent are one mark: an error a
// workflow action marked is permanent to a consumer, and the other way.
func TestPermanentIsWorkflowPermanent(t *testing.T) {
	err := errors.New("card declined")
	if !messaging.IsPermanent(workflow.Permanent(err)) || !workflow.IsPermanent(messaging.Permanent(err)) {
		t.Error("a permanent error marked by one package is not permanent to the other")
	}
}
