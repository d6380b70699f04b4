package browser

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/servicetest"
	"github.com/idemkit/idem/internal/uitest"
	"github.com/idemkit/idem/workflow"
)

var (
	installOnce sync.Once
	installErr  error
)

// chromium returns the path of Debian's chromium, installing the package
// when it is missing and the test runs as root (as CI does). Without it
// the test skips, or fails under IDEM_REQUIRE_SERVICES=1.
func chromium(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil && os.Geteuid() == 0 {
		installOnce.Do(func() {
			install := func() error {
				return exec.Command("apt-get", "install", "-y", "-q", "chromium").Run()
			}
			if installErr = install(); installErr != nil {
				_ = exec.Command("apt-get", "update", "-q").Run()
				installErr = install()
			}
		})
		path, err = exec.LookPath("chromium")
	}
	if err != nil {
		msg := "chromium is not installed (apt-get install chromium)"
		if installErr != nil {
			msg += "; installing it failed: " + installErr.Error()
		}
		if servicetest.Required() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path
}

// browse starts a headless Chromium and returns a tab's context.
func browse(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.WindowSize(1280, 900),
		chromedp.DisableGPU,
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	tab, cancelTab := chromedp.NewContext(alloc)
	// The first call starts the browser, on a context without a deadline
	// (a deadline there would stop the browser); later ones have one.
	if err := chromedp.Do(tab); err != nil {
		cancelTab()
		cancelAlloc()
		t.Fatalf("starting chromium: %v", err)
	}
	ctx, cancelTime := context.WithTimeout(tab, 2*time.Minute)
	t.Cleanup(func() { cancelTime(); cancelTab(); cancelAlloc() })
	return ctx
}

// shots is where screenshots go: $IDEM_UI_SCREENSHOTS, else a temporary
// directory of the test.
func shots(t *testing.T) string {
	dir := os.Getenv("IDEM_UI_SCREENSHOTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func run(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// get runs one action that returns a value.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png := get(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", filepath.Join(dir, name))
}

func count(t *testing.T, ctx context.Context, sel string) int {
	t.Helper()
	return len(get(t, ctx, "count "+sel, chromedp.Nodes(chromedp.CSSAll(sel), chromedp.AtLeast(0))))
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return strings.TrimSpace(get(t, ctx, "text of "+sel, chromedp.Text(chromedp.CSS(sel), chromedp.NodeVisible)))
}

// TestDashboardInChromium walks the dashboard as an operator does: a
// wrong token first, then sign in, search a key, open its record, read
// the rates, open a workflow instance and cancel it, delete a record.
func TestDashboardInChromium(t *testing.T) {
	f := uitest.New(t, nil)
	srv := httptest.NewServer(f.Handler)
	t.Cleanup(srv.Close)
	ctx := browse(t)
	dir := shots(t)
	base := srv.URL

	// A wrong token sees nothing but the form again.
	run(t, ctx, "open keys signed out", chromedp.Navigate(base+"/ui/keys?scope=billing"), chromedp.WaitVisible(chromedp.ID("token")))
	screenshot(t, ctx, dir, "01-signin.png")
	run(t, ctx, "wrong token",
		chromedp.SendKeys(chromedp.ID("token"), "not-a-token"),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("signin-error")))
	if got := text(t, ctx, "#signin-error"); got != "That token is not valid." {
		t.Fatalf("sign-in error %q", got)
	}
	html := get(t, ctx, "page html", chromedp.OuterHTML(chromedp.CSS("html")))
	if strings.Contains(html, "order-42</code>") || count(t, ctx, "#records") != 0 || count(t, ctx, "nav") != 0 {
		t.Fatal("a wrong token sees the dashboard")
	}
	screenshot(t, ctx, dir, "02-wrong-token.png")

	// Sign in: back to the page asked for.
	run(t, ctx, "sign in",
		chromedp.SendKeys(chromedp.ID("token"), uitest.BillingToken),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("records")))
	if got := text(t, ctx, "#records tbody"); !strings.Contains(got, "order-42") || !strings.Contains(got, "order-43") {
		t.Fatalf("keys table %q", got)
	}
	screenshot(t, ctx, dir, "03-keys.png")

	// Search a key and open its record; bodies only on demand.
	run(t, ctx, "search",
		chromedp.SendKeys(chromedp.ID("search-key"), "order-42"),
		chromedp.Click(chromedp.ID("search")),
		chromedp.WaitVisible(chromedp.ID("outcome-status")))
	if got := text(t, ctx, "#outcome-status"); got != "201" {
		t.Fatalf("stored status %q", got)
	}
	if !strings.Contains(text(t, ctx, "#outcome-headers"), "X-Order") || count(t, ctx, "#body") != 0 {
		t.Fatal("the record shows no X-Order header, or its body unasked")
	}
	screenshot(t, ctx, dir, "04-record.png")
	run(t, ctx, "show bodies", chromedp.Click(chromedp.ID("show-bodies")), chromedp.WaitVisible(chromedp.ID("body")))
	if got := text(t, ctx, "#body"); got != `{"order":42}` {
		t.Fatalf("body %q", got)
	}
	screenshot(t, ctx, dir, "05-record-bodies.png")

	// A chart with data: the duplicate rate over six samples.
	run(t, ctx, "rates", chromedp.Navigate(base+"/ui/rates"), chromedp.WaitVisible(chromedp.CSS("svg.chart")))
	if n := count(t, ctx, "svg.chart"); n != 3 {
		t.Fatalf("%d charts, want 3", n)
	}
	points := get(t, ctx, "duplicate rate line", chromedp.AttributeValue(chromedp.CSS(`svg.chart polyline.data[data-series="duplicate rate"]`), "points"))
	if !points.Exists || len(strings.Fields(points.Value)) != 6 {
		t.Fatalf("duplicate rate points %q", points.Value)
	}
	screenshot(t, ctx, dir, "06-rates.png")

	// A workflow instance: its diagram with the path it took.
	run(t, ctx, "workflows", chromedp.Navigate(base+"/ui/workflows"), chromedp.WaitVisible(chromedp.ID("instances")))
	screenshot(t, ctx, dir, "07-workflows.png")
	run(t, ctx, "open order-7",
		chromedp.Click(chromedp.Search(`//a[code[text()="order-7"]]`)),
		chromedp.WaitVisible(chromedp.CSS("svg.diagram")))
	if n := count(t, ctx, `svg.diagram g.edge.taken[data-from="pending"][data-to="reserved"]`); n != 1 {
		t.Fatalf("%d taken pending->reserved edges, want 1", n)
	}
	if n := count(t, ctx, "svg.diagram g.edge.taken"); n != 1 {
		t.Fatalf("%d taken edges, want 1", n)
	}
	if n := count(t, ctx, `svg.diagram g.state.current[data-state="reserved"]`); n != 1 {
		t.Fatal("the current state is not outlined")
	}
	if n := count(t, ctx, "svg.diagram g.state.visited"); n != 2 {
		t.Fatalf("%d visited states, want 2", n)
	}
	screenshot(t, ctx, dir, "08-instance.png")

	// Cancel it: the engine has the request; once it ran, cancelled.
	run(t, ctx, "cancel", chromedp.Click(chromedp.ID("cancel")), chromedp.WaitVisible(chromedp.ID("done")))
	in, err := f.Engine.Get(context.Background(), "order-7")
	if err != nil || !in.CancelRequested {
		t.Fatalf("after cancel: %+v %v", in, err)
	}
	f.Settle(t)
	run(t, ctx, "reload", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("wf-status")))
	if got := text(t, ctx, "#wf-status"); got != string(workflow.Cancelled) {
		t.Fatalf("status on the page %q", got)
	}
	if in, _ := f.Engine.Get(context.Background(), "order-7"); in.Status != workflow.Cancelled {
		t.Fatalf("engine: %s", in.Status)
	}
	screenshot(t, ctx, dir, "09-cancelled.png")

	run(t, ctx, "messaging", chromedp.Navigate(base+"/ui/messaging"), chromedp.WaitVisible(chromedp.CSS("section.consumer")))
	if got := text(t, ctx, "section.consumer td.dead"); got != "1" {
		t.Fatalf("dead letters %q", got)
	}
	screenshot(t, ctx, dir, "10-messaging.png")

	// Delete a record, confirmed.
	run(t, ctx, "record order-43", chromedp.Navigate(base+"/ui/keys/record?scope=billing&key=order-43"), chromedp.WaitVisible(chromedp.ID("delete")),
		chromedp.Click(chromedp.ID("delete")), chromedp.WaitVisible(chromedp.ID("confirm")))
	screenshot(t, ctx, dir, "11-delete-confirm.png")
	run(t, ctx, "delete", chromedp.Click(chromedp.ID("confirm")), chromedp.Click(chromedp.ID("confirm-delete")), chromedp.WaitVisible(chromedp.ID("deleted")))
	if _, err := f.Store.Get(context.Background(), &idem.KeyParams{Scope: "billing", Key: "order-43"}); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("order-43 after delete: %v", err)
	}
	screenshot(t, ctx, dir, "12-deleted.png")
}
