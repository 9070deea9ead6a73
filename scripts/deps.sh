#!/usr/bin/env bash
# Installs what the test suite needs beyond Go, Java and Maven: the outside
# Kafka clients it checks the router against (kcat, and confluent-kafka for
# the system Python that runs the seed's producer), PostgreSQL for the shared
# ledger, Chromium for the console's browser tests, and a C compiler for the
# race detector.
set -euo pipefail

missing=()
command -v "$(go env CC)" >/dev/null || missing+=(gcc)
command -v kcat >/dev/null || missing+=(kcat)
/usr/bin/python3 -c 'import confluent_kafka' 2>/dev/null || missing+=(python3-confluent-kafka)
# The shared ledger's tests run a private server with scripts/postgres.sh.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# The console's tests drive a headless browser.
command -v chromium >/dev/null || missing+=(chromium)
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "deps.sh: please install these Debian packages: ${missing[*]} (tests that need them are skipped)" >&2
  exit 0
fi
echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
