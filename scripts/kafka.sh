#!/usr/bin/env bash
# Runs a real single-node Apache Kafka broker (KRaft, combined broker and
# controller) from the jars Maven resolves, without Docker.
#
#   scripts/kafka.sh start|stop|status|logs|bootstrap
#
# Environment:
#   KAFKA_PORT        PLAINTEXT port on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  controller port (default 9093)
#   KAFKA_STATE_DIR   pid file, logs and data (default /tmp/eventrouter-kafka-$KAFKA_PORT)
#   KAFKA_CACHE_DIR   where the jars are kept between runs (default ~/.cache/eventrouter)
#   KAFKA_HEAP        JVM heap (default 512m)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pom="$here/kafka/pom.xml"
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
port=${KAFKA_PORT:-9092}
cport=${KAFKA_CONTROLLER_PORT:-9093}
state=${KAFKA_STATE_DIR:-/tmp/eventrouter-kafka-$port}
cache=${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/eventrouter}
libs="$cache/kafka-$version/libs"
heap=${KAFKA_HEAP:-512m}
pidfile="$state/kafka.pid"
logfile="$state/kafka.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

running() {
  [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# fetch resolves the broker's jars once per Kafka version.
fetch() {
  [[ -f "$libs/.complete" ]] && return
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch the Kafka $version jars"
  command -v java >/dev/null || die "Java 17 or newer is needed to run Kafka $version"
  echo "kafka.sh: fetching Kafka $version jars with Maven into $libs" >&2
  local tmp="$libs.tmp.$$"
  rm -rf "$tmp"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >&2 \
    || die "Maven could not resolve the Kafka $version jars (see above)"
  rm -rf "$libs"
  mkdir -p "$(dirname "$libs")"
  mv "$tmp" "$libs"
  touch "$libs/.complete"
}

kafka_java() {
  java -Xms128m -Xmx"$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$state/log4j2.properties" -cp "$libs/*" "$@"
}

configure() {
  mkdir -p "$state/data"
  cat >"$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$state/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
  cat >"$state/log4j2.properties" <<PROPS
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $logfile
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = warn
logger.apache.name = org.apache.kafka
logger.apache.level = warn
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
PROPS
}

start() {
  if running; then
    echo "kafka.sh: Kafka $version already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
    return
  fi
  port_open "$port" && die "127.0.0.1:$port is taken by another process; stop it or set KAFKA_PORT"
  fetch
  configure
  if [[ ! -f "$state/data/meta.properties" ]]; then
    local id
    id=$(kafka_java kafka.tools.StorageTool random-uuid)
    kafka_java kafka.tools.StorageTool format --standalone -t "$id" -c "$state/server.properties" >"$state/format.log" 2>&1 \
      || { cat "$state/format.log" >&2; die "formatting the KRaft storage failed"; }
  fi
  : >"$logfile"
  nohup java -Xms256m -Xmx"$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$state/log4j2.properties" -cp "$libs/*" \
    kafka.Kafka "$state/server.properties" >"$state/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  wait_ready 120
  echo "kafka.sh: Kafka $version running on 127.0.0.1:$port (pid $(cat "$pidfile"), state $state)"
}

# wait_ready waits until the broker answers a metadata request.
wait_ready() {
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do
    running || { tail -n 40 "$state/stdout.log" "$logfile" >&2; die "Kafka exited while starting"; }
    if port_open "$port" &&
      kafka_java org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "127.0.0.1:$port" >/dev/null 2>&1; then
      return
    fi
    sleep 1
  done
  tail -n 40 "$state/stdout.log" "$logfile" >&2
  stop >&2 || true
  die "Kafka did not answer a metadata request on 127.0.0.1:$port within $1 s"
}

stop() {
  if ! running; then
    echo "kafka.sh: Kafka is not running"
    rm -f "$pidfile"
    return
  fi
  local pid
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "kafka.sh: Kafka (pid $pid) ignored SIGTERM for 30 s; killing it" >&2
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  echo "kafka.sh: Kafka stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running; then echo "running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; else echo "stopped"; exit 3; fi ;;
  logs) tail -n "${2:-100}" "$logfile" ;;
  bootstrap) echo "127.0.0.1:$port" ;;
  libs) fetch; echo "$libs" ;;
  *) echo "usage: $0 start|stop|status|logs [N]|bootstrap|libs" >&2; exit 2 ;;
esac
