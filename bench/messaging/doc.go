// Package messaging holds the consumer figures of docs/performance.md
// ("Messaging consumers"): messages/s through messaging.Consumer on
// memstore, pebblestore and PostgreSQL, consumed from NATS JetStream
// (broker/natsjs) and RabbitMQ (broker/rabbitmq), beside the same consumer
// without dedup, Watermill's Deduplicator middleware and idem's Watermill
// middleware, all in the same run. The package has no API: its tests
// measure, with IDEM_BENCH_FIGURES=1.
package messaging
