package idemui_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"

	"github.com/idemkit/idem/idemapi"
	"github.com/idemkit/idem/idemui"
	"github.com/idemkit/idem/memstore"
)

// A service mounts the dashboard at /ui beside the API, with one Rates
// fed by the API server and shown by the dashboard.
func ExampleNew() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := memstore.New(nil)
	defer store.Close()
	tokens := map[string][]string{"ops-secret-token": {"*"}}

	rates := idemui.NewRates(nil) // a sample every 10 s, 6 hours kept
	go rates.Run(ctx)
	api, err := idemapi.NewServer(store, &idemapi.Config{Tokens: tokens, Observer: rates})
	if err != nil {
		panic(err)
	}
	ui, err := idemui.New(&idemui.Config{Store: store, Tokens: tokens, Rates: rates})
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ui/", ui)
	mux.Handle("/", api)

	srv := httptest.NewServer(mux)
	defer srv.Close()
	client := srv.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := client.PostForm(srv.URL+"/ui/signin", url.Values{"token": {"ops-secret-token"}})
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, resp.Header.Get("Location"), resp.Cookies()[0].HttpOnly)
	// Output: 303 /ui/keys true
}
