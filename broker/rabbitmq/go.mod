module github.com/idemkit/idem/broker/rabbitmq

go 1.26

require (
	github.com/idemkit/idem v0.0.0
	github.com/rabbitmq/amqp091-go v1.17.0
)

replace (
	github.com/idemkit/idem => ../..
	github.com/idemkit/idem/store/pgstore => ../../store/pgstore
)
