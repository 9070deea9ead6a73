#!/usr/bin/env bash
# Runs a real single-node Apache Kafka broker (KRaft, combined broker and
# controller) from the jars Maven resolves, without Docker.
#
#   scripts/kafka.sh start|stop|status|logs|bootstrap|secure
#   scripts/kafka.sh cluster start|stop|status|bootstrap|logs NODE
#   scripts/kafka.sh cluster kill NODE|stop NODE|start NODE|restart NODE
#
# `cluster` runs three such nodes instead, for the failover tests: three
# JVMs, each a broker and a controller (combined mode), the three of them
# the controller quorum's voters, with replication factor 3,
# min.insync.replicas=2 and the offsets topic replicated three times, as a
# production cluster is set. Only PLAINTEXT listeners. `kill NODE` sends
# SIGKILL (a crash); `stop NODE` a SIGTERM (a controlled shutdown, as in a
# rolling restart); `start NODE` starts a stopped node and waits until it
# has rejoined; `restart NODE` is stop then start.
#
# Beside the PLAINTEXT listener the broker has three for the tests of
# connecting to a secured cluster: SASL_SSL (SCRAM-SHA-256, SCRAM-SHA-512
# and PLAIN for the user "router"), SSL with client certificates required
# (mutual TLS), and SASL_PLAINTEXT with PLAIN only. A CA and the broker's certificate for
# localhost and 127.0.0.1 are made with openssl at start, and the SCRAM
# users are added when the storage is formatted. `secure` prints what a
# client needs to use them, as NAME=value lines.
#
# Environment:
#   KAFKA_PORT        PLAINTEXT port on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  controller port (default 9093)
#   KAFKA_SASL_SSL_PORT    SASL_SSL port (default KAFKA_PORT+2)
#   KAFKA_SSL_PORT         SSL port with client certificates required (default KAFKA_PORT+3)
#   KAFKA_SASL_PLAINTEXT_PORT  SASL_PLAINTEXT port, PLAIN only (default KAFKA_PORT+4)
#   KAFKA_STATE_DIR   pid file, logs and data (default /tmp/eventrouter-kafka-$KAFKA_PORT)
#   KAFKA_CACHE_DIR   where the jars are kept between runs (default ~/.cache/eventrouter)
#   KAFKA_HEAP        JVM heap (default 512m)
#   KAFKA_CLUSTER_PORT     PLAINTEXT port of cluster node 1; node N listens on
#                          KAFKA_CLUSTER_PORT+100*(N-1), its controller one above
#                          (default 19092: 19092, 19192, 19292)
#   KAFKA_CLUSTER_STATE_DIR  the cluster's state (default /tmp/eventrouter-kafka-cluster-$KAFKA_CLUSTER_PORT)
#   KAFKA_CLUSTER_HEAP     each cluster node's JVM heap (default 384m)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pom="$here/kafka/pom.xml"
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
port=${KAFKA_PORT:-9092}
cport=${KAFKA_CONTROLLER_PORT:-9093}
saslport=${KAFKA_SASL_SSL_PORT:-$((port + 2))}
sslport=${KAFKA_SSL_PORT:-$((port + 3))}
plainsaslport=${KAFKA_SASL_PLAINTEXT_PORT:-$((port + 4))}
state=${KAFKA_STATE_DIR:-/tmp/eventrouter-kafka-$port}
cache=${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/eventrouter}
libs="$cache/kafka-$version/libs"
heap=${KAFKA_HEAP:-512m}
pidfile="$state/kafka.pid"
logfile="$state/kafka.log"
secure="$state/secure"

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
    -Dlog4j2.configurationFile="${tool_log4j:-$state/log4j2.properties}" -cp "$libs/*" "$@"
}

# credentials makes the passwords once (they are in the formatted storage)
# and a CA, the broker's and a client's certificates, and a second CA that
# signed nothing the broker has, for the wrong-CA test. The certificates are
# made again only when they are missing or expire within a week, so that a
# restart mid-suite leaves the tests' CA file as it was.
credentials() {
  command -v openssl >/dev/null || die "openssl is needed to make the test certificates"
  command -v keytool >/dev/null || die "keytool (from the JDK) is needed to make the broker's trust store"
  mkdir -p "$secure"
  chmod 700 "$secure"
  if [[ ! -f $secure/passwords ]]; then
    # Storage formatted with other passwords must be formatted again.
    rm -f "$state/data/.scram-users"
    (umask 077 && printf 'SCRAM_PASSWORD=%s\nSTORE_PASSWORD=%s\n' "$(openssl rand -hex 16)" "$(openssl rand -hex 16)" >"$secure/passwords")
  fi
  # shellcheck source=/dev/null
  source "$secure/passwords"
  if [[ -f $secure/broker.p12 && -f $secure/truststore.p12 && -f $secure/client.pem && -f $secure/client-key.pem && -f $secure/other-ca.pem ]] &&
    openssl x509 -checkend 604800 -noout -in "$secure/broker.pem" >/dev/null 2>&1 &&
    openssl x509 -checkend 604800 -noout -in "$secure/client.pem" >/dev/null 2>&1; then
    return
  fi
  (
    cd "$secure"
    umask 077
    rm -f ./*.pem ./*.p12 ./*.csr ./*.srl ./*.ext
    local subj=/O=eventrouter-test
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "$subj/CN=eventrouter test CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "$subj/CN=some other CA" -keyout other-ca-key.pem -out other-ca.pem 2>/dev/null
    issue() { # name CN extensions
      printf '%s\n' "$3" >"$1.ext"
      openssl req -newkey rsa:2048 -nodes -subj "$subj/CN=$2" -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
      openssl x509 -req -days 30 -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    }
    issue broker localhost $'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth'
    issue client router 'extendedKeyUsage=clientAuth'
    openssl pkcs12 -export -in broker.pem -inkey broker-key.pem -certfile ca.pem -name broker -passout "pass:$STORE_PASSWORD" -out broker.p12
    keytool -importcert -noprompt -alias ca -file ca.pem -keystore truststore.p12 -storetype PKCS12 -storepass "$STORE_PASSWORD" >/dev/null 2>&1
    rm -f ./*.csr ./*.srl ./*.ext ca-key.pem other-ca-key.pem
    chmod 644 ca.pem other-ca.pem client.pem
  ) || die "making the test certificates failed"
}

configure() {
  mkdir -p "$state/data"
  cat >"$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SASL_SSL://127.0.0.1:$saslport,SSL://127.0.0.1:$sslport,SASL_PLAINTEXT://127.0.0.1:$plainsaslport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$saslport,SSL://127.0.0.1:$sslport,SASL_PLAINTEXT://127.0.0.1:$plainsaslport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT
ssl.keystore.type=PKCS12
ssl.keystore.location=$secure/broker.p12
ssl.keystore.password=$STORE_PASSWORD
ssl.key.password=$STORE_PASSWORD
ssl.truststore.type=PKCS12
ssl.truststore.location=$secure/truststore.p12
ssl.truststore.password=$STORE_PASSWORD
listener.name.ssl.ssl.client.auth=required
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_router="$SCRAM_PASSWORD";
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_router="$SCRAM_PASSWORD";
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
  configure_logging "$state/log4j2.properties" "$logfile"
}

# configure_logging writes log settings to $1 that log to $2: warnings,
# and the start line.
configure_logging() {
  mkdir -p "$(dirname "$1")"
  cat >"$1" <<PROPS
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $2
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
  for p in "$saslport" "$sslport" "$plainsaslport"; do
    port_open "$p" && die "127.0.0.1:$p is taken by another process; stop it or set KAFKA_SASL_SSL_PORT, KAFKA_SSL_PORT and KAFKA_SASL_PLAINTEXT_PORT"
  done
  fetch
  credentials
  configure
  if [[ -f "$state/data/meta.properties" && ! -f "$state/data/.scram-users" ]]; then
    echo "kafka.sh: the storage in $state/data has no SCRAM users; formatting it again" >&2
    rm -rf "$state/data"
    mkdir -p "$state/data"
  fi
  if [[ ! -f "$state/data/meta.properties" ]]; then
    local id
    id=$(kafka_java kafka.tools.StorageTool random-uuid)
    kafka_java kafka.tools.StorageTool format --standalone -t "$id" -c "$state/server.properties" \
      --add-scram "SCRAM-SHA-256=[name=router,password=$SCRAM_PASSWORD]" \
      --add-scram "SCRAM-SHA-512=[name=router,password=$SCRAM_PASSWORD]" >"$state/format.log" 2>&1 \
      || { cat "$state/format.log" >&2; die "formatting the KRaft storage failed"; }
    touch "$state/data/.scram-users"
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
  end_pid "$(cat "$pidfile")" TERM Kafka
  rm -f "$pidfile"
  echo "kafka.sh: Kafka stopped"
}

# end_pid sends process $1 signal $2 and waits until it has exited; one
# that outlives SIGTERM by 30 s is killed. $3 names it.
end_pid() {
  local pid=$1 sig=$2
  kill -s "$sig" "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.25
  done
  echo "kafka.sh: $3 (pid $pid) ignored SIG$sig for 30 s; killing it" >&2
  kill -9 "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

# The three-node cluster. Node N's files are in $cstate/nodeN.
cbase=${KAFKA_CLUSTER_PORT:-19092}
cstate=${KAFKA_CLUSTER_STATE_DIR:-/tmp/eventrouter-kafka-cluster-$cbase}
cheap=${KAFKA_CLUSTER_HEAP:-384m}
cnodes=(1 2 3)

cport() { echo $((cbase + 100 * ($1 - 1))); }
ccport() { echo $((cbase + 100 * ($1 - 1) + 1)); }
cdir() { echo "$cstate/node$1"; }
crunning() { [[ -f "$(cdir "$1")/kafka.pid" ]] && kill -0 "$(cat "$(cdir "$1")/kafka.pid")" 2>/dev/null; }
cbootstrap() {
  local n out=()
  for n in "${cnodes[@]}"; do out+=("127.0.0.1:$(cport "$n")"); done
  (IFS=,; echo "${out[*]}")
}
cnode() {
  [[ ${1:-} =~ ^[123]$ ]] || die "cluster: NODE is 1, 2 or 3, not '${1:-}'"
}

cconfigure() {
  local n=$1 dir voters="" v
  dir=$(cdir "$n")
  for v in "${cnodes[@]}"; do voters+="${voters:+,}$v@127.0.0.1:$(ccport "$v")"; done
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(cport "$n"),CONTROLLER://127.0.0.1:$(ccport "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(cport "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
# As production is set: every partition on all three nodes, and a write
# acknowledged (acks=all) only once two of them have it.
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
num.partitions=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
# Sized for a 2-core machine that runs three of these.
num.network.threads=2
num.io.threads=2
background.threads=2
num.replica.fetchers=1
log.cleaner.threads=1
PROPS
  configure_logging "$dir/log4j2.properties" "$dir/kafka.log"
}

# cstart_node starts node n's JVM, formatting its storage the first time.
cstart_node() {
  local n=$1 dir
  dir=$(cdir "$n")
  if crunning "$n"; then return; fi
  local p
  for p in "$(cport "$n")" "$(ccport "$n")"; do
    port_open "$p" && die "127.0.0.1:$p is taken by another process; stop it or set KAFKA_CLUSTER_PORT"
  done
  cconfigure "$n"
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    kafka_java kafka.tools.StorageTool format -t "$(cat "$cstate/cluster.id")" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; die "formatting node $n's KRaft storage failed"; }
  fi
  # The last run's log is kept, for what a crashed node said.
  [[ -f $dir/kafka.log ]] && mv "$dir/kafka.log" "$dir/kafka.log.1"
  [[ -f $dir/stdout.log ]] && mv "$dir/stdout.log" "$dir/stdout.log.1"
  : >"$dir/kafka.log"
  nohup java -Xms128m -Xmx"$cheap" -XX:+UseG1GC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$libs/*" \
    kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/kafka.pid"
}

# cwait waits until node n has started: it has caught up with the
# controllers' metadata and been unfenced, which it logs as started.
cwait() {
  local n=$1 deadline=$((SECONDS + $2)) dir
  dir=$(cdir "$n")
  while ((SECONDS < deadline)); do
    crunning "$n" || { tail -n 40 "$dir/stdout.log" "$dir/kafka.log" >&2; die "cluster node $n exited while starting"; }
    if port_open "$(cport "$n")" && grep -q "Kafka Server started" "$dir/kafka.log"; then
      return
    fi
    sleep 0.5
  done
  tail -n 40 "$dir/stdout.log" "$dir/kafka.log" >&2
  die "cluster node $n did not start within $2 s"
}

# cstop_node ends node n: with SIGTERM, a controlled shutdown that first
# moves its partitions' leadership away; with KILL, a crash.
cstop_node() {
  local n=$1 sig=${2:-TERM} pid dir
  dir=$(cdir "$n")
  if ! crunning "$n"; then rm -f "$dir/kafka.pid"; return; fi
  pid=$(cat "$dir/kafka.pid")
  end_pid "$pid" "$sig" "cluster node $n"
  rm -f "$dir/kafka.pid"
}

cluster() {
  local cmd=${1:-} n
  # Kafka's own tools, run here, log beside the nodes.
  tool_log4j=$cstate/log4j2.properties
  [[ -f $tool_log4j ]] || configure_logging "$tool_log4j" "$cstate/tools.log"
  case "$cmd" in
    start)
      fetch
      mkdir -p "$cstate"
      if [[ ! -s "$cstate/cluster.id" ]]; then
        kafka_java kafka.tools.StorageTool random-uuid >"$cstate/cluster.id.tmp"
        mv "$cstate/cluster.id.tmp" "$cstate/cluster.id"
      fi
      if [[ -n ${2:-} ]]; then
        cnode "$2"
        cstart_node "$2"
        cwait "$2" 120
        echo "kafka.sh: cluster node $2 running on 127.0.0.1:$(cport "$2")"
        return
      fi
      for n in "${cnodes[@]}"; do cstart_node "$n"; done
      for n in "${cnodes[@]}"; do cwait "$n" 180; done
      echo "kafka.sh: Kafka $version cluster of 3 nodes running on $(cbootstrap) (state $cstate)"
      ;;
    stop)
      if [[ -n ${2:-} ]]; then
        cnode "$2"
        cstop_node "$2" TERM
        echo "kafka.sh: cluster node $2 stopped"
        return
      fi
      # All at once: one by one, the last ones would wait for a quorum to
      # hand their leadership to.
      for n in "${cnodes[@]}"; do
        if crunning "$n"; then kill "$(cat "$(cdir "$n")/kafka.pid")" 2>/dev/null || true; fi
      done
      for n in "${cnodes[@]}"; do cstop_node "$n" TERM; done
      echo "kafka.sh: Kafka cluster stopped"
      ;;
    kill)
      cnode "${2:-}"
      crunning "$2" || die "cluster node $2 is not running"
      cstop_node "$2" KILL
      echo "kafka.sh: cluster node $2 killed"
      ;;
    restart)
      cnode "${2:-}"
      cstop_node "$2" TERM
      cluster start "$2"
      ;;
    status)
      local down=0
      for n in "${cnodes[@]}"; do
        if crunning "$n"; then echo "node $n: running on 127.0.0.1:$(cport "$n") (pid $(cat "$(cdir "$n")/kafka.pid"))"
        else echo "node $n: stopped"; down=$((down + 1)); fi
      done
      ((down == 0)) || exit 3
      ;;
    bootstrap) cbootstrap ;;
    logs) cnode "${2:-}"; tail -n "${3:-100}" "$(cdir "$2")/kafka.log" ;;
    *) echo "usage: $0 cluster start [NODE]|stop [NODE]|kill NODE|restart NODE|status|bootstrap|logs NODE [N]" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  cluster) shift; cluster "$@" ;;
  start) start ;;
  stop) stop ;;
  status)
    if running; then echo "running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; else echo "stopped"; exit 3; fi ;;
  logs) tail -n "${2:-100}" "$logfile" ;;
  bootstrap) echo "127.0.0.1:$port" ;;
  secure)
    [[ -f $secure/passwords ]] || die "no credentials in $secure yet; run $0 start"
    # shellcheck source=/dev/null
    source "$secure/passwords"
    cat <<ENV
SASL_SSL=127.0.0.1:$saslport
SSL=127.0.0.1:$sslport
SASL_PLAINTEXT=127.0.0.1:$plainsaslport
CA_FILE=$secure/ca.pem
OTHER_CA_FILE=$secure/other-ca.pem
CLIENT_CERT_FILE=$secure/client.pem
CLIENT_KEY_FILE=$secure/client-key.pem
USERNAME=router
PASSWORD=$SCRAM_PASSWORD
ENV
    ;;
  libs) fetch; echo "$libs" ;;
  *) echo "usage: $0 start|stop|status|logs [N]|bootstrap|secure|libs|cluster ..." >&2; exit 2 ;;
esac
