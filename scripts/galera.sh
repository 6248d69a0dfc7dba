#!/usr/bin/env bash
# A 3-node MariaDB Galera cluster on loopback ports, plus an asynchronous GTID replica of it for
# reads, from Debian's packages (mariadb-server, galera-4, rsync). For the cluster tests and for
# trying the ledger past one database server; nothing here is for production.
#
#   scripts/galera.sh up       start (bootstrap node 1, join nodes 2 and 3 by SST, start the replica)
#   scripts/galera.sh down     stop everything and delete the data directories
#   scripts/galera.sh status   each node's wsrep state and the replica's
#   scripts/galera.sh kill N   SIGKILL node N's server (a crash: no shutdown, no goodbye to the cluster)
#   scripts/galera.sh start N  start node N again and wait until it has rejoined (Synced)
#
# Ports (override with GALERA_BASE_PORT, default 4306): nodes 4306, 4307, 4308 (SQL), Galera
# replication 4567+n*10, IST 4568+n*10, SST 4444+n; the replica 4309. User root, no password, from
# 127.0.0.1 only. Data under GALERA_DIR (default /tmp/ledger-galera). Runs the servers as `mysql`.
set -euo pipefail

DIR=${GALERA_DIR:-/tmp/ledger-galera}
BASE=${GALERA_BASE_PORT:-4306}
NODES=3
LIB=${GALERA_LIBRARY:-/usr/lib/galera/libgalera_smm.so}
AS_MYSQL=()
[ "$(id -u)" = 0 ] && AS_MYSQL=(runuser -u mysql --)

port() { echo $((BASE + $1 - 1)); }          # node n's SQL port (n = 1..3; 4 = the replica)
gport() { echo $((4567 + ($1 - 1) * 10)); }  # node n's Galera replication port
cluster_address() {
    local list=() n
    for n in $(seq 1 $NODES); do list+=("127.0.0.1:$(gport "$n")"); done
    (IFS=,; echo "gcomm://${list[*]}")
}
sql() { mariadb -h127.0.0.1 -P"$(port "$1")" -uroot --connect-timeout=2 -N -B -e "$2"; }

write_config() {  # node n, its config file
    local n=$1 cnf=$DIR/node$1/my.cnf
    cat >"$cnf" <<CNF
[mariadb]
datadir=$DIR/node$n/data
socket=$DIR/node$n/mysqld.sock
pid-file=$DIR/node$n/mysqld.pid
log-error=$DIR/node$n/error.log
port=$(port "$n")
bind-address=127.0.0.1
skip-name-resolve
innodb_buffer_pool_size=64M
innodb_log_file_size=16M
server_id=$n
# What Galera needs of every node (docs/deploying.md): row-based binlog, interleaved auto-increment
# locks, InnoDB, primary keys on every table (the ledger's tables all have one).
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
log_bin=$DIR/node$n/binlog
log_slave_updates=ON
gtid_domain_id=$n
wsrep_gtid_mode=ON
wsrep_gtid_domain_id=100
wsrep_on=ON
wsrep_provider=$LIB
wsrep_cluster_name=ledger
wsrep_cluster_address=$(cluster_address)
wsrep_node_name=node$n
wsrep_node_address=127.0.0.1:$(gport "$n")
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:$(gport "$n");ist.recv_addr=127.0.0.1:$(($(gport "$n") + 1));base_port=$(gport "$n")"
# Causal reads: a read on this node waits until it has applied every write set committed anywhere
# before it started, so an idempotency look-up, a wallet check or a webhook's event row read on one
# node sees what another node committed.
wsrep_sync_wait=1
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:$((4444 + n))
CNF
}

write_replica_config() {
    local cnf=$DIR/replica/my.cnf
    cat >"$cnf" <<CNF
[mariadb]
datadir=$DIR/replica/data
socket=$DIR/replica/mysqld.sock
pid-file=$DIR/replica/mysqld.pid
log-error=$DIR/replica/error.log
port=$(port 4)
bind-address=127.0.0.1
skip-name-resolve
innodb_buffer_pool_size=64M
server_id=99
read_only=ON
CNF
}

init_datadir() {  # directory
    mkdir -p "$1/data"
    [ "$(id -u)" = 0 ] && chown -R mysql:mysql "$1"
    "${AS_MYSQL[@]}" mariadb-install-db --no-defaults --datadir="$1/data" --auth-root-authentication-method=normal \
        --skip-test-db >/dev/null
}

start_server() {  # config file, extra arguments…
    local cnf=$1; shift
    "${AS_MYSQL[@]}" mariadbd --defaults-file="$cnf" "$@" >/dev/null 2>&1 &
}

wait_synced() {  # node n
    for _ in $(seq 1 120); do
        if [ "$(sql "$1" "SHOW STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | cut -f2)" = Synced ]; then
            return 0
        fi
        sleep 0.5
    done
    echo "node $1 did not reach Synced; see $DIR/node$1/error.log" >&2
    return 1
}

wait_up() {  # port
    for _ in $(seq 1 120); do
        mariadb -h127.0.0.1 -P"$1" -uroot --connect-timeout=2 -e "SELECT 1" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}

up() {
    if sql 1 "SELECT 1" >/dev/null 2>&1; then
        echo "A cluster already answers on $(port 1); 'scripts/galera.sh down' first." >&2
        exit 1
    fi
    local started=$SECONDS n
    rm -rf "$DIR" && mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown mysql:mysql "$DIR"
    for n in $(seq 1 $NODES); do
        mkdir -p "$DIR/node$n"
        write_config "$n"
    done
    init_datadir "$DIR/node1"
    echo "==> node 1: bootstrapping the cluster on 127.0.0.1:$(port 1)"
    start_server "$DIR/node1/my.cnf" --wsrep-new-cluster
    wait_synced 1
    sql 1 "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;" 2>/dev/null || true
    for n in $(seq 2 $NODES); do
        mkdir -p "$DIR/node$n/data"
        [ "$(id -u)" = 0 ] && chown -R mysql:mysql "$DIR/node$n"
        echo "==> node $n: joining on 127.0.0.1:$(port "$n") (state transfer by rsync)"
        start_server "$DIR/node$n/my.cnf"
        wait_synced "$n"
    done
    echo "==> replica: asynchronous GTID replica of node 1 on 127.0.0.1:$(port 4)"
    mkdir -p "$DIR/replica"
    write_replica_config
    init_datadir "$DIR/replica"
    start_server "$DIR/replica/my.cnf"
    wait_up "$(port 4)"
    sql 1 "CREATE USER IF NOT EXISTS 'repl'@'127.0.0.1' IDENTIFIED BY 'repl'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';"
    sql 4 "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$(port 1), MASTER_USER='repl', MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos; START SLAVE;"
    echo "==> cluster of $(sql 1 "SHOW STATUS LIKE 'wsrep_cluster_size'" | cut -f2) nodes up in $((SECONDS - started)) s"
    status
}

down() {
    local n pidfile
    for n in node1 node2 node3 replica; do
        pidfile=$DIR/$n/mysqld.pid
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
    for _ in $(seq 1 60); do
        pgrep -f "mariadbd --defaults-file=$DIR/" >/dev/null || break
        sleep 0.5
    done
    pkill -9 -f "mariadbd --defaults-file=$DIR/" 2>/dev/null || true
    rm -rf "$DIR"
    echo "==> cluster stopped"
}

status() {
    local n
    local state
    for n in $(seq 1 $NODES); do
        printf 'node %s (127.0.0.1:%s): ' "$n" "$(port "$n")"
        if state=$(sql "$n" "SELECT CONCAT(VARIABLE_VALUE) FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME IN ('WSREP_LOCAL_STATE_COMMENT','WSREP_CLUSTER_SIZE') ORDER BY VARIABLE_NAME DESC" 2>/dev/null); then
            echo "$state" | paste -sd' ' | sed 's/ / (cluster size /; s/$/)/'
        else
            echo down
        fi
    done
    printf 'replica (127.0.0.1:%s): ' "$(port 4)"
    mariadb -h127.0.0.1 -P"$(port 4)" -uroot --connect-timeout=2 -e "SHOW SLAVE STATUS\G" 2>/dev/null \
        | awk '/ Slave_IO_Running:| Slave_SQL_Running:| Seconds_Behind_Master:/ {printf "%s %s  ", $1, $2} END {print ""}'
}

kill_node() {  # node n
    local pidfile=$DIR/node$1/mysqld.pid
    [ -f "$pidfile" ] || { echo "node $1 is not running" >&2; exit 1; }
    kill -9 "$(cat "$pidfile")"
    rm -f "$pidfile"
    echo "==> node $1 killed (SIGKILL)"
}

start_node() {  # node n: rejoins by IST (or SST when its state is lost)
    local started=$SECONDS
    start_server "$DIR/node$1/my.cnf"
    wait_synced "$1"
    echo "==> node $1 rejoined and Synced in $((SECONDS - started)) s"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    kill) kill_node "${2:?node number}" ;;
    start) start_node "${2:?node number}" ;;
    *) echo "usage: $0 up|down|status|kill N|start N" >&2; exit 2 ;;
esac
