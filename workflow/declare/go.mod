module github.com/idemkit/idem/workflow/declare

go 1.26

require (
	github.com/goccy/go-yaml v1.19.2
	github.com/idemkit/idem v0.0.0
)

replace github.com/idemkit/idem => ../../
