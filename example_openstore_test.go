package idem_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/idemkit/idem"
	_ "github.com/idemkit/idem/memstore" // registers mem:
)

// Open a store named by a URL, as idem serve --store does. Which schemes
// exist depends on the store packages the program imports.
func ExampleOpenStore() {
	ctx := context.Background()
	store, err := idem.OpenStore(ctx, "mem:", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	ledger, _ := idem.New(store, nil)
	defer ledger.Close()
	fmt.Println("opened", store.(idem.Describer).Describe())

	// A scheme whose package the program does not import is refused.
	_, err = idem.OpenStore(ctx, "postgres://postgres@127.0.0.1:5432/test", nil)
	fmt.Println(errors.Is(err, idem.ErrInvalid))
	// Output:
	// opened memory (nothing is kept after exit)
	// true
}
