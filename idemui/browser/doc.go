// Package browser holds the dashboard's browser tests: they drive a real
// headless Chromium (Debian's chromium package) with chromedp through the
// pages of idemui, in a module of their own so that the root module keeps
// to the standard library. See docs/ui.md, "Tests".
package browser
