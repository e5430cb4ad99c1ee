#!/usr/bin/env bash
# Set-up and run helpers behind the Makefile. Idempotent: reuses what is already there.
#
#   scripts/dev.sh venv       create .venv and install kunpay[worker,dev]
#   scripts/dev.sh rabbitmq   install (Debian package) and start RabbitMQ unless one runs
#   scripts/dev.sh postgres   install (Debian package) and start a private PostgreSQL
#   scripts/dev.sh demo       all of the above but postgres, then sandbox + worker + example
#   scripts/dev.sh test       venv, rabbitmq, postgres, lint, the whole test suite
#   scripts/dev.sh faults     the fault scenarios at a large scale, with a table
#   scripts/dev.sh stop       stop the demo's sandbox and worker
#   scripts/dev.sh bench ...  venv, rabbitmq, postgres, then benchmarks/e2e.py with these options
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${KUNPAY_VENV:-$ROOT/.venv}
RUN=$ROOT/.run
PYTHON=${PYTHON:-python3}
PG_PORT=${KUNPAY_PG_PORT:-54329}
PG_DIR=${KUNPAY_PG_DIR:-/tmp/kunpay-pg-$PG_PORT}
SANDBOX_PORT=${KUNPAY_SANDBOX_PORT:-8900}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  say "installing $* (Debian packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.kunpay-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing kunpay[worker,dev] into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[worker,dev]"
    touch "$stamp"
  fi
}

rabbitmq() {
  if command -v rabbitmq-diagnostics >/dev/null 2>&1 && as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    say "RabbitMQ is running"
    management
    return
  fi
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  say "starting RabbitMQ"
  as_root rabbitmq-server -detached
  # -detached returns before the node has registered; await_startup fails until it has.
  local waited=0
  until as_root rabbitmqctl -q await_startup >/dev/null 2>&1; do
    waited=$((waited + 1))
    if [ "$waited" -ge 180 ]; then
      echo "RabbitMQ did not start within 180 s; see /var/log/rabbitmq/" >&2
      exit 1
    fi
    sleep 1
  done
  say "RabbitMQ is up"
  management
}

management() { # the management API: `kunpay-worker broker-setup` (and its tests) use it
  if ! as_root rabbitmq-plugins -q list -e rabbitmq_management 2>/dev/null | grep -q rabbitmq_management; then
    say "enabling RabbitMQ's management plugin"
    as_root rabbitmq-plugins -q enable rabbitmq_management >/dev/null
  fi
  local waited=0
  until (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null; do
    waited=$((waited + 1))
    if [ "$waited" -ge 120 ]; then
      echo "RabbitMQ's management API did not answer on 15672 within 120 s" >&2
      exit 1
    fi
    sleep 1
  done
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

postgres() {
  local bin
  bin=$(pg_bin)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    apt_install postgresql
    bin=$(pg_bin)
  fi
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    say "PostgreSQL is running on port $PG_PORT"
    return
  fi
  if [ ! -f "$PG_DIR/PG_VERSION" ]; then
    say "creating a PostgreSQL cluster in $PG_DIR"
    mkdir -p "$PG_DIR"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$PG_DIR"
    as_postgres "$bin/initdb" -D "$PG_DIR" -A trust -U postgres >/dev/null
  fi
  say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_postgres "$bin/pg_ctl" -D "$PG_DIR" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null
}

stop() {
  for name in worker sandbox; do
    if [ -f "$RUN/$name.pid" ]; then
      local pid
      pid=$(cat "$RUN/$name.pid")
      if kill -0 "$pid" 2>/dev/null; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      fi
      rm -f "$RUN/$name.pid"
    fi
  done
}

start_bg() { # name, command...
  local name=$1; shift
  mkdir -p "$RUN"
  nohup "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  say "$name started (pid $!, log .run/$name.log)"
}

demo() {
  venv
  rabbitmq
  stop
  set -a
  # shellcheck disable=SC1091
  . examples/sandbox.env
  set +a
  export KUNPAY_MTN_MOMO__BASE_URL="http://127.0.0.1:$SANDBOX_PORT"
  say "applying migrations and declaring the topology"
  "$VENV/bin/kunpay-worker" migrate
  start_bg sandbox "$VENV/bin/kunpay-worker" sandbox --port "$SANDBOX_PORT" \
    --pawapay-callback-url "$KUNPAY_PUBLIC_BASE_URL/payments/pawapay/webhook/" --pawapay-sign-callbacks \
    --flutterwave-webhook-url "$KUNPAY_PUBLIC_BASE_URL/payments/flutterwave/webhook/" \
    --flutterwave-secret-hash "$KUNPAY_FLUTTERWAVE__WEBHOOK_SECRET_HASH"
  start_bg worker "$VENV/bin/kunpay-worker" run
  say "running examples/collect.py"
  if ! "$VENV/bin/python" examples/collect.py "$KUNPAY_AMQP_URL"; then
    say "the demo failed; last worker log lines:"
    tail -n 20 "$RUN/worker.log" >&2
    exit 1
  fi
  say "the sandbox and worker keep running; 'make stop' stops them"
}

test_all() {
  venv
  rabbitmq
  postgres
  export KUNPAY_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  export KUNPAY_TEST_AMQP_URL=${KUNPAY_TEST_AMQP_URL:-amqp://guest:guest@localhost:5672/}
  export KUNPAY_TEST_PG_DIR=$PG_DIR  # the fault suite restarts this cluster
  lint
  if [ "$#" -gt 0 ]; then
    "$VENV/bin/pytest" "$@"
    return
  fi
  say "running the test suite"
  "$VENV/bin/pytest" -m "not fault"
  # Last and on its own: these restart RabbitMQ and PostgreSQL under the running stacks.
  say "running the fault suite (small runs; 'make faults' runs them large)"
  "$VENV/bin/pytest" -m fault tests/fault
}

bench() {
  venv
  rabbitmq
  postgres
  export KUNPAY_BENCH_POSTGRES_URL=${KUNPAY_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:$PG_PORT/postgres}
  export KUNPAY_BENCH_AMQP_URL=${KUNPAY_BENCH_AMQP_URL:-amqp://guest:guest@localhost:5672/}
  say "running benchmarks/e2e.py $*"
  "$VENV/bin/python" -m benchmarks.e2e "$@"
}

faults() { # the fault suite's scenarios at a large scale, with a table (issue 6)
  venv
  rabbitmq
  postgres
  export KUNPAY_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  export KUNPAY_TEST_AMQP_URL=${KUNPAY_TEST_AMQP_URL:-amqp://guest:guest@localhost:5672/}
  export KUNPAY_TEST_PG_DIR=$PG_DIR
  "$VENV/bin/python" -m tests.fault "$@"
}

lint() {
  venv
  say "ruff"
  "$VENV/bin/ruff" check kunpay_sdk kunpay_worker tests examples benchmarks
  "$VENV/bin/ruff" format --check kunpay_sdk kunpay_worker tests examples benchmarks
  say "mypy --strict"
  "$VENV/bin/mypy"
}

case "${1:-}" in
  venv) venv ;;
  rabbitmq) rabbitmq ;;
  postgres) postgres ;;
  demo) demo ;;
  test) shift; test_all "$@" ;;
  faults) shift; faults "$@" ;;
  bench) shift; bench "$@" ;;
  lint) lint ;;
  stop) stop ;;
  *) echo "usage: $0 venv|rabbitmq|postgres|demo|test|lint|stop|bench" >&2; exit 2 ;;
esac
