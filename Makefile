# The README's commands. `make test` is what CI runs.
.PHONY: build run test fuzz bench bench-embedded bench-short kafka-start kafka-stop kafka-cluster-start kafka-cluster-stop

build:
	go build -o eventrouter .

run: build
	./eventrouter run

# Starts a real Kafka broker (if none is running), runs the whole suite
# with the race detector against it and against the embedded broker, and
# stops what it started.
test:
	scripts/test.sh

# Runs every fuzz target for FUZZTIME each (default 20s); CI runs it.
fuzz:
	scripts/fuzz.sh

# Measures the router against bare sarama and Kafka's perf tools on a real
# broker (started if needed); writes bench/results.json and bench/results.png.
bench:
	go run ./bench --cpuprofile bench/router.cpu.pprof

# The same on the embedded broker: no Java needed.
bench-embedded:
	go run ./bench --embedded --out bench/embedded

# Small counts, one run each: proves the harness works; CI runs it.
bench-short:
	go run ./bench --short --out $${TMPDIR:-/tmp}/eventrouter-bench-short

kafka-start:
	scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

# A three-node Kafka cluster (RF 3, min.insync.replicas=2) on 19092, 19192
# and 19292, as the failover tests use.
kafka-cluster-start:
	scripts/kafka.sh cluster start

kafka-cluster-stop:
	scripts/kafka.sh cluster stop
