module github.com/idemkit/idem/store/pebblestore

go 1.26

require github.com/idemkit/idem v0.0.0

replace github.com/idemkit/idem => ../../
