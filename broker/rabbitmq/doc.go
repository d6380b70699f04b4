// Package rabbitmq consumes and publishes RabbitMQ messages
// (github.com/rabbitmq/amqp091-go) through messaging.Consumer, so that a
// handler runs at most once to success per message id although RabbitMQ
// delivers at least once.
//
// Consume reads a queue with manual acks and a prefetch limit, turns each
// delivery into a messaging.Message (ID from the message-id property,
// Delivery from the quorum queue's x-delivery-count, Subject from the
// routing key) and settles it by the Consumer's decision: ack (handled,
// duplicate, superseded), nack with requeue after the retry delay, or nack
// without requeue to the queue's dead-letter exchange. The ack is sent only
// after the ledger recorded the outcome, so a consumer killed at any point
// leads to a redelivery that the ledger answers, never to a lost message.
//
// Publisher publishes persistent messages in confirm mode with their id as
// the message-id; DeclareQueue declares a quorum queue and its dead-letter
// queue. Quorum queues have no deduplication of their own: the consumer's
// ledger is the dedup.
//
//	conn, _ := amqp.Dial("amqp://guest:guest@127.0.0.1:5672/")
//	ch, _ := conn.Channel()
//	_ = rabbitmq.DeclareQueue(ch, "orders", &rabbitmq.QueueOptions{DeadLetterQueue: "orders.dead"})
//	consumer, _ := messaging.NewConsumer(ledger, handle, &messaging.Config{Scope: "orders"})
//	err := rabbitmq.Consume(ctx, ch, "orders", consumer, &rabbitmq.Options{Workers: 4})
//
// See docs/broker-rabbitmq.md for the mapping, the topology and the crash
// test.
package rabbitmq
