#!/usr/bin/env bash
# The whole test suite: installs the outside clients, starts a real Kafka
# broker unless one is running, runs every test with the race detector
# against it and against the embedded broker, and stops the broker if it
# started it.
#
# Extra arguments go to go test, e.g. scripts/test.sh -run TestSeed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Fail now, not after starting Kafka: the race detector needs cgo.
cc=$(go env CC)
if [[ $(go env CGO_ENABLED) != 1 ]] || ! command -v "${cc%% *}" >/dev/null; then
  echo "test.sh: the race detector needs cgo and a C compiler (go env CC is '$cc'); install gcc" >&2
  exit 1
fi

scripts/deps.sh
# Mailpit, the SMTP server the email tests read, built from its Go module.
EVENTROUTER_TEST_MAILPIT=${EVENTROUTER_TEST_MAILPIT:-$(scripts/mailpit.sh)}
export EVENTROUTER_TEST_MAILPIT

started=""
pg_started=""
secure_env=""
cluster_started=""
# cleanup stops what this script started, each step whatever the others
# did, and keeps the script's exit code.
cleanup() {
  local rc=$?
  if [[ -n $cluster_started ]]; then scripts/kafka.sh cluster stop || true; fi
  if [[ -n $started ]]; then scripts/kafka.sh stop || true; fi
  if [[ -n $pg_started ]]; then scripts/postgres.sh stop || true; fi
  if [[ -n $secure_env ]]; then rm -f "$secure_env"; fi
  exit "$rc"
}
trap cleanup EXIT
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  scripts/kafka.sh start
  started=yes
fi
# PostgreSQL for the shared ledger's tests, in a private data directory.
if [[ -z ${EVENTROUTER_TEST_POSTGRES:-} ]]; then
  if ! scripts/postgres.sh status >/dev/null 2>&1; then
    scripts/postgres.sh start
    pg_started=yes
  fi
  EVENTROUTER_TEST_POSTGRES=$(scripts/postgres.sh dsn)
  export EVENTROUTER_TEST_POSTGRES
fi
# Lets the database-outage test run and stop a server of its own.
export EVENTROUTER_TEST_POSTGRES_SCRIPT=$PWD/scripts/postgres.sh

if [[ -z ${EVENTROUTER_TEST_BROKERS:-} ]]; then
  EVENTROUTER_TEST_BROKERS=$(scripts/kafka.sh bootstrap)
  export EVENTROUTER_TEST_BROKERS
  # Lets the broker-restart test stop and start this broker.
  export EVENTROUTER_TEST_KAFKA_SCRIPT=$PWD/scripts/kafka.sh
  # The same broker's SASL_SSL and SSL listeners and their credentials.
  secure_env=$(mktemp)
  scripts/kafka.sh secure >"$secure_env"
  export EVENTROUTER_TEST_KAFKA_SECURE=$secure_env
fi
echo "test.sh: real Kafka at $EVENTROUTER_TEST_BROKERS; embedded broker in-process; PostgreSQL for the shared ledger"
go vet ./...
# The timeout is per package binary: generous, as -race slows tests
# several times (the whole suite took 7.5 minutes without it).
go test -race -count=1 -timeout 45m -v -skip '^TestCluster' "$@" ./...

# The cluster scenarios (leader failover, rolling restart, quorum lost),
# once, on a three-node cluster of their own: they kill its brokers.
# Skipped when the arguments pick other tests.
if [[ $# -eq 0 || "$*" == *Cluster* ]]; then
  # The single broker is done with: its CPU goes to the three nodes.
  if [[ -n $started ]]; then
    scripts/kafka.sh stop
    started=""
  fi
  if ! scripts/kafka.sh cluster status >/dev/null 2>&1; then
    # Set first: a node that fails to start leaves the others running.
    cluster_started=yes
    scripts/kafka.sh cluster start
  fi
  EVENTROUTER_TEST_KAFKA_CLUSTER=$PWD/scripts/kafka.sh \
    go test -race -count=1 -timeout 30m -v -run '^TestCluster' "$@" ./app/
fi
