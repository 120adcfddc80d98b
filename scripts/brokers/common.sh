# shellcheck shell=bash
# Helpers shared by the broker files: logging, probes, pid checks, apt-get, waiting, and the
# status line of one broker, built on the functions each broker file defines.
# Sourced by scripts/brokers.sh, which sets HELPERS, STATE_DIR and TIMEOUT first.

log() { printf '[brokers] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'; }

need_root() { [ "$(id -u)" = 0 ] || die "'$1' needs root (apt-get, runuser); run it as root"; }

find_python() {
    local p
    for p in /usr/bin/python3 "$(command -v python3 || true)"; do
        if [ -n "$p" ] && [ -x "$p" ]; then PY="$p"; return 0; fi
    done
    return 1
}
PY=""

probe() { "$PY" "$HELPERS/probe.py" "$@" 2>/dev/null; }
probe_verbose() { "$PY" "$HELPERS/probe.py" "$@"; }

# alive = exists and is not a zombie (killed processes may wait a while to be reaped by init)
pid_alive() {
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
    local st; st="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null || true)"
    [ "$st" != Z ]
}
# pid_is <pid> <regex>: the pid is alive and its command line matches (guards against stale
# pid files whose pid was reused after a reboot or after everything was killed)
pid_is() {
    pid_alive "${1:-}" || return 1
    local cmd; cmd="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
    [[ "$cmd" =~ $2 ]]
}
pidfile_pid() { [ -s "$1" ] && head -n1 "$1" | tr -dc '0-9'; }

# write $2 (content) to file $1 only when it differs; returns 0 if the file changed
write_if_changed() {
    local f="$1" content="$2"
    if [ -f "$f" ] && [ "$(cat "$f")" = "$content" ]; then return 1; fi
    printf '%s\n' "$content" >"$f"
    return 0
}

tail_log() { # file [lines]
    local f="$1" n="${2:-25}"
    if [ -r "$f" ]; then
        log "---- last $n lines of $f ----"
        tail -n "$n" "$f" | sed 's/^/[brokers]   | /' >&2 || true
    fi
}

# apt-get install with no service auto-start; 'apt-get update' once per run
APT_LOG="$STATE_DIR/apt.log"
APT_UPDATED=0
apt_install() {
    need_root "apt-get install"
    mkdir -p "$STATE_DIR"
    local created_policy=0 rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # keep package postinsts from starting Debian's own instances (we start our own)
        printf '#!/bin/sh\n# temporary, created by factbus scripts/brokers.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update (log: $APT_LOG)"
        apt-get -o DPkg::Lock::Timeout=300 update >>"$APT_LOG" 2>&1 || rc=$?
        if [ "$rc" = 0 ]; then APT_UPDATED=1; fi
    fi
    if [ "$rc" = 0 ]; then
        log "apt-get install $* (log: $APT_LOG)"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
            --no-install-recommends "$@" >>"$APT_LOG" 2>&1 || rc=$?
    fi
    if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "$rc" != 0 ]; then
        tail_log "$APT_LOG" 30
        die "apt-get failed installing: $*"
    fi
}

# wait_until <broker> <timeout> <check-fn> <alive-fn> <logfile> [why-fn]
#   check-fn: succeeds when the broker answers; alive-fn: fails when the server process is gone;
#   why-fn: prints why the check fails (run once on timeout)
wait_until() {
    local name="$1" timeout="$2" check="$3" alive="$4" logf="$5" why="${6:-}"
    local deadline=$((SECONDS + timeout)) dead_since=""
    while :; do
        if "$check"; then return 0; fi
        if ! "$alive"; then
            # give a just-forked process a few seconds to write its pid file
            if [ -z "$dead_since" ]; then dead_since=$SECONDS
            elif [ $((SECONDS - dead_since)) -ge 5 ]; then
                tail_log "$logf"
                die "$name did not come up: its server process is not running (log: $logf)"
            fi
        else
            dead_since=""
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail_log "$logf"
            if [ -n "$why" ]; then "$why" 2>&1 | sed 's/^/[brokers] last check: /' >&2 || true; fi
            die "$name did not come up within ${timeout}s (log: $logf)"
        fi
        sleep 0.5
    done
}

port_open() { probe tcp 127.0.0.1 "$1"; }

# wait_while <seconds> <command...>: until the command fails; 1 if it still succeeds after <seconds>
wait_while() {
    local deadline=$((SECONDS + $1))
    shift
    while "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.3
    done
}

wait_port_closed() { wait_while "$2" port_open "$1"; } # port seconds
wait_pid_gone() { wait_while "$2" pid_alive "$1"; }    # pid seconds

# ----------------------------------------------------------------------------- one broker

broker_status() { # name: one line, "up" with URL and pid, or "down" (status 3)
    if "${1}_up"; then
        printf '%-9s up    %s\n' "$1" "$("${1}_info")"
    else
        printf '%-9s down\n' "$1"
        return 3
    fi
}
