#!/usr/bin/env bash
# Install (if missing) and run real message brokers natively on 127.0.0.1 for factbus tests/CI.
#
#   bash scripts/brokers.sh start   [name...]   install if missing, start if not running, wait until each answers
#   bash scripts/brokers.sh stop    [name...]   graceful stop
#   bash scripts/brokers.sh restart [name...]   graceful stop, then start
#   bash scripts/brokers.sh kill9   [name...]   kill -9 the server process, then start again (data kept)
#   bash scripts/brokers.sh status  [name...]   one line per broker: "<name> up|down ..."; exit 3 if any is down
#   bash scripts/brokers.sh env     [name...]   print the FACTBUS_TEST_*_URL exports
#
# names: rabbitmq redis postgres kafka (default: all four). Every command is idempotent.
# Needs root for start/stop (apt-get, runuser). Debian 12; no systemd, no Docker, no downloads
# other than Debian's apt repositories and Maven Central. See docs/brokers.md.
#
# Tunables (environment):
#   FACTBUS_BROKERS_DIR     state root (data, logs, pid files)     default /var/lib/factbus
#   FACTBUS_BROKER_TIMEOUT  seconds to wait for each broker         default 120
#   FACTBUS_KAFKA_VERSION   org.apache.kafka:kafka_2.13 version     default 4.3.1
#   FACTBUS_KAFKA_HEAP      Kafka JVM heap options                  default "-Xms256m -Xmx1g"
#   FACTBUS_PG_BIN          PostgreSQL server binaries              default /usr/lib/postgresql/15/bin
#   FACTBUS_RABBITMQ_MANAGEMENT  1 (default): management plugin, HTTP API on 127.0.0.1:15672; 0: off
#   FACTBUS_RABBITMQ_SCHEDULERS  Erlang schedulers (+S N:N); default 1 on <= 2 cores, else Erlang's
#                                own (one per core, also "default"); read when RabbitMQ (re)starts
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HELPERS="$SCRIPT_DIR/brokers"
STATE_DIR="${FACTBUS_BROKERS_DIR:-/var/lib/factbus}"
TIMEOUT="${FACTBUS_BROKER_TIMEOUT:-120}"

ALL_BROKERS=(rabbitmq redis postgres kafka)

# One file per broker, scripts/brokers/<name>.sh, each defining the same functions:
#   <name>_packages  Debian packages still missing (start installs every broker's in one apt-get)
#   <name>_up        succeeds when the broker answers
#   <name>_launch    start the server without waiting; <name>_wait: wait until it answers
#   <name>_stop, <name>_kill9, <name>_info (URL and pid), <name>_env (its exports)
# and common.sh builds broker_status <name> on them (cmd_start installs, launches and
# waits for every broker named, with one apt-get).
# A new broker: a file with these functions, its name in ALL_BROKERS and in parse_names.
# shellcheck source=scripts/brokers/common.sh
. "$HELPERS/common.sh"
for _broker in "${ALL_BROKERS[@]}"; do
    # shellcheck source=/dev/null
    . "$HELPERS/$_broker.sh"
done
unset _broker

# Run "$@" in a subshell with errexit really on (it is ignored inside `if`/`||` contexts) and
# without the lock fd (daemons started from here must not inherit fd 9). Status in ISO_RC.
isolated() {
    set +e
    ( set -e; exec 9>&-; "$@" )
    ISO_RC=$?
    set -e
}

parse_names() {
    NAMES=()
    if [ "$#" = 0 ]; then NAMES=("${ALL_BROKERS[@]}"); return; fi
    local n
    for n in "$@"; do
        case "$n" in
            rabbitmq|redis|postgres|kafka) NAMES+=("$n") ;;
            rabbit|amqp) NAMES+=(rabbitmq) ;;
            postgresql|pg) NAMES+=(postgres) ;;
            all) NAMES=("${ALL_BROKERS[@]}") ;;
            *) die "unknown broker '$n' (expected: ${ALL_BROKERS[*]})" ;;
        esac
    done
}

LOCKED=0
take_lock() {
    need_root "$1"
    [ "$LOCKED" = 0 ] || return 0
    LOCKED=1
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/.brokers.lock"
    if ! flock -n 9; then
        log "waiting for another scripts/brokers.sh run to finish"
        flock -w 900 9 || die "could not take $STATE_DIR/.brokers.lock"
    fi
}

ensure_python() {
    find_python && return 0
    apt_install python3
    find_python || die "python3 not found"
}

cmd_start() {
    parse_names "$@"
    local t_all n pkgs=() missing
    t_all="$(now)"
    # fast path: everything already answers
    local all_up=1
    for n in "${NAMES[@]}"; do "${n}_up" || { all_up=0; break; }; done
    if [ "$all_up" = 1 ]; then
        log "all up already: ${NAMES[*]} ($(since "$t_all"))"
        return 0
    fi
    take_lock start
    # 1) install what is missing, in one apt-get run
    for n in "${NAMES[@]}"; do
        missing="$("${n}_packages")"
        # shellcheck disable=SC2206
        [ -z "$missing" ] || pkgs+=($missing)
    done
    if [ "${#pkgs[@]}" -gt 0 ]; then
        local t_apt; t_apt="$(now)"
        apt_install "${pkgs[@]}"
        log "installed ${pkgs[*]} ($(since "$t_apt"))"
    fi
    # 2) launch everything that is not answering (non-blocking), then 3) wait for each
    declare -A T0=() WAS_UP=()
    local failed=()
    for n in "${NAMES[@]}"; do
        T0[$n]="$(now)"
        if "${n}_up"; then WAS_UP[$n]=1; continue; fi
        isolated "${n}_launch"
        if [ "$ISO_RC" != 0 ]; then failed+=("$n"); WAS_UP[$n]=failed; fi
    done
    for n in "${NAMES[@]}"; do
        case "${WAS_UP[$n]:-}" in
            1) log "$n: already up" ;;
            failed) ;;
            *)
                isolated "${n}_wait"
                if [ "$ISO_RC" = 0 ]; then
                    log "$n: up, $(since "${T0[$n]}") after launch"
                else
                    failed+=("$n")
                fi ;;
        esac
    done
    if [ "${#failed[@]}" -gt 0 ]; then
        die "broker(s) did not come up: ${failed[*]} ($(since "$t_all") total)"
    fi
    log "all up: ${NAMES[*]} ($(since "$t_all") total)"
}

cmd_stop() {
    parse_names "$@"
    take_lock stop
    local n failed=()
    for n in "${NAMES[@]}"; do
        local t0; t0="$(now)"
        isolated "${n}_stop"
        if [ "$ISO_RC" = 0 ]; then log "$n: down ($(since "$t0"))"; else failed+=("$n"); fi
    done
    [ "${#failed[@]}" = 0 ] || die "could not stop: ${failed[*]}"
}

cmd_restart() {
    parse_names "$@"
    local names=("${NAMES[@]}")
    cmd_stop "${names[@]}"
    cmd_start "${names[@]}"
}

cmd_kill9() {
    parse_names "$@"
    local names=("${NAMES[@]}") n
    take_lock kill9
    for n in "${names[@]}"; do
        isolated "${n}_kill9"
        [ "$ISO_RC" = 0 ] || die "$n: kill -9 failed"
    done
    cmd_start "${names[@]}"
}

cmd_status() {
    parse_names "$@"
    local n rc=0
    for n in "${NAMES[@]}"; do broker_status "$n" || rc=3; done
    return "$rc"
}

cmd_env() {
    parse_names "$@"
    local n
    for n in "${NAMES[@]}"; do "${n}_env"; done
}

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

main() {
    local cmd="${1:-help}"
    [ "$#" = 0 ] || shift
    case "$cmd" in
        env) cmd_env "$@"; return ;;
        help|-h|--help) usage; return ;;
    esac
    ensure_python
    case "$cmd" in
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        restart) cmd_restart "$@" ;;
        kill9|kill-9) cmd_kill9 "$@" ;;
        status) cmd_status "$@" ;;
        *) usage >&2; die "unknown command '$cmd'" ;;
    esac
}

main "$@"
