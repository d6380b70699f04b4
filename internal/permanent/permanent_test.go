package permanent

import (
	"errors"
	"fmt"
	"testing"
)

func TestMark(t *testing.T) {
	base := errors.New("card declined")
	marked := Mark(base)
	if !Is(marked) || !Is(fmt.Errorf("charge: %w", marked)) {
		t.Error("a marked error, and one wrapping it, must be permanent")
	}
	if Is(base) || Is(nil) || Mark(nil) != nil {
		t.Error("an unmarked error and nil are not permanent; Mark(nil) is nil")
	}
	if !errors.Is(marked, base) || marked.Error() != base.Error() {
		t.Errorf("the mark must keep the error: %v", marked)
	}
}
