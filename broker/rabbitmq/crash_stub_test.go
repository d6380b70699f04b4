package rabbitmq

const crashQueueEnv = "IDEM_RABBITMQ_CRASH_QUEUE"

func crashWorker(string) int { return 2 }
