#!/bin/sh
# Runs the order saga example from the repository root: the stub services
# (stock, payments, shipping) on 127.0.0.1:9100, idem proxy in front of the
# stub's payments on 127.0.0.1:7071, and idem serve with the saga on
# 127.0.0.1:7070, its data in a fresh bin/order-saga-data. The token for
# idem wf (bound to the scope wf:order) is in bin/order-saga-token.
# Ctrl-C stops all three. See examples/order-saga/README.md.
set -eu
cd "$(dirname "$0")/../.."
go build -o bin/idem ./cmd/idem
go build -o bin/order-saga-stub ./examples/order-saga/stub
data=bin/order-saga-data
rm -rf "$data"
# A new token for the workflow type "order": serve reads the tokens
# file, idem wf the token alone.
umask 077
token="order-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$token" > bin/order-saga-token
printf '%s wf:order\n' "$token" > bin/order-saga-tokens

pids=""
stop() {
	trap - INT TERM EXIT
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap stop INT TERM EXIT

# A payment service that does not honour Idempotency-Key: idem proxy
# fronts it. Orders whose number is a multiple of 7 are declined.
bin/order-saga-stub -addr 127.0.0.1:9100 -payments-dedup=false -decline 7 &
pids="$pids $!"
bin/idem proxy --upstream http://127.0.0.1:9100 --listen 127.0.0.1:7071 --admin "" --store mem: &
pids="$pids $!"
# The document's vars already name these addresses; --workflow-var
# points them elsewhere without editing it.
bin/idem serve --store "file:$data" --tokens bin/order-saga-tokens --workflows examples/order-saga/workflows \
	--workflow-var stock=http://127.0.0.1:9100 --workflow-var payments=http://127.0.0.1:7071 &
pids="$pids $!"

echo "order saga: in another shell, from $(pwd):"
echo "  export IDEM_SERVER=http://127.0.0.1:7070 IDEM_TOKEN_FILE=bin/order-saga-token"
wait
