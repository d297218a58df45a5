#!/usr/bin/env bash
# Makes sure PostgreSQL, MariaDB and Redis are up on loopback, as the tests expect:
#   PostgreSQL 127.0.0.1:5432 (user postgres, trust auth), MariaDB 127.0.0.1:3306 (root, empty
#   password), Redis 127.0.0.1:6379 (nothing on disk).
# Starts any that is down; installs any that is absent from Debian's packages. Idempotent.
# With arguments, only those services: `scripts/services.sh redis`.
set -euo pipefail

want() { [ "${#SERVICES[@]}" -eq 0 ] || [[ " ${SERVICES[*]} " == *" $1 "* ]]; }
SERVICES=("$@")

log() { echo "services: $*" >&2; }
die() { echo "services: ERROR: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

wait_for() { # wait_for <what> <seconds> <command...>
  local what=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  die "$what did not come up within ${secs}s"
}

missing=()
if want postgres; then command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql postgresql-client); fi
if want mariadb; then [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server mariadb-client); fi
if want redis; then
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
fi
# The tests' throwaway TLS servers (batch-testkit's servers) make their certificates with it.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# batch-common's promtool test lints /metrics with `promtool check metrics` (Debian's prometheus).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# The dashboard's browser test (batch-launcher/tests/dashboard/browser.rs) drives headless Chromium.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  # Only promtool is wanted from prometheus: its postinst would start a server on :9090 (and
  # fail the install where the init script cannot run). Without a policy-rc.d of the machine's
  # own (Docker images have one that denies every start), a temporary one denies that start.
  policy=/usr/sbin/policy-rc.d own_policy=
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n[ "$1" = prometheus ] && exit 101\nexit 0\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    own_policy=1
    trap 'as_root rm -f "$policy"' EXIT
  fi
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$own_policy" ]; then as_root rm -f "$policy"; trap - EXIT; fi
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then # whatever started it anyway: stopped
    if [ -d /run/systemd/system ]; then
      as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    else
      as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
  fi
fi

# --- PostgreSQL ---------------------------------------------------------------------------
if want postgres; then
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  [ -n "$ver" ] || die "no PostgreSQL cluster under /etc/postgresql"
  log "starting PostgreSQL $ver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_for "PostgreSQL" 60 pg_isready -h 127.0.0.1 -p 5432 -q
fi
if ! psql -w -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
  # A fresh package install asks for passwords on TCP: trust loopback, as the tests expect.
  ver=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba=/etc/postgresql/$ver/main/pg_hba.conf
  log "allowing trust auth on loopback in $hba"
  as_root sed -i -E 's/^(local|host)(\s+all\s+all\s+.*)(peer|md5|scram-sha-256)\s*$/\1\2trust/' "$hba"
  grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba" \
    || echo "host all all 127.0.0.1/32 trust" | as_root tee -a "$hba" >/dev/null
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  wait_for "PostgreSQL login as postgres" 30 psql -w -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1'
fi
fi

# --- MariaDB ------------------------------------------------------------------------------
mysql_ok() { mariadb -h 127.0.0.1 -P 3306 -uroot -e 'SELECT 1' >/dev/null 2>&1; }
if want mariadb && ! mysql_ok; then
  if ! mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1; then
    log "starting MariaDB"
    as_root mkdir -p /run/mysqld && as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for "MariaDB" 60 mariadb-admin --protocol=socket -uroot ping
  fi
  if ! mysql_ok; then
    # A fresh install lets root in only through the socket: allow root with an empty password on loopback.
    log "allowing root with an empty password on 127.0.0.1"
    as_root mariadb --protocol=socket -uroot -e "
      ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
      CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
      GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
      FLUSH PRIVILEGES;"
    wait_for "MariaDB login as root" 30 mysql_ok
  fi
fi

# --- Redis --------------------------------------------------------------------------------
if want redis && ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  log "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for "Redis" 30 sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'
fi

log "up: ${SERVICES[*]:-postgres mariadb redis}"
