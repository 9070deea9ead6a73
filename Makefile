# The README's commands. `make test` is what CI runs.
.PHONY: build run test kafka-start kafka-stop

build:
	go build -o eventrouter .

run: build
	./eventrouter run

# Starts a real Kafka broker (if none is running), runs the whole suite
# against it and against the embedded broker, and stops what it started.
test:
	scripts/test.sh

kafka-start:
	scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop
