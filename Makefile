# The two commands a newcomer needs:
#   make serve   run `idem serve` on the embedded store in ./idem-data
#   make test    gofmt, vet and race-enabled tests of every module
.PHONY: serve test bench build

serve:
	go run ./cmd/idem serve

test:
	./scripts/test

build:
	go build -o bin/idem ./cmd/idem

bench:
	./scripts/bench
