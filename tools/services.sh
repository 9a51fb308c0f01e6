# Sourced by tools/test.sh after tools/setup.sh (so from the repository root).
# Makes PostgreSQL and MariaDB reachable for the store suites and exports
#   ASYNCJOBS_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test
#   ASYNCJOBS_TEST_MYSQL=mysql://root@127.0.0.1:3306/test
# for cargo test and testthat, or leaves a variable unset and says why.
#
# Per engine, in order:
#  1. ASYNCJOBS_TEST_POSTGRES / ASYNCJOBS_TEST_MYSQL already set: used as they
#     are, nothing is started; the value `skip` skips that engine.
#  2. A server answers on 127.0.0.1 (ports ASYNCJOBS_PG_PORT, default 5432, and
#     ASYNCJOBS_MYSQL_PORT, default 3306): it is used, and database `test` is
#     created if missing.
#  3. Otherwise, as root, Debian's postgresql / mariadb-server are installed if
#     missing and started without systemd, PostgreSQL with trust auth for
#     127.0.0.1 and MariaDB with root@127.0.0.1 and an empty password (a test
#     machine's setup). Servers started here keep running after the tests.
# It never fails the run: what cannot be done ends in one line
# "asyncjobs: <engine> store suites SKIPPED: <reason>". ASYNCJOBS_SERVICES_START=0
# forbids installing and starting anything (as for a user who is not root);
# ASYNCJOBS_SERVICES_WAIT (default 60) bounds each server's start in seconds.
# Logs of installs and servers started here go to target/services.log.
#
# Everything below runs inside functions called from an `||` list, so a
# failing command returns to its caller instead of ending tools/test.sh under
# `set -e`: each step checks its own status.

aj_svc_log="$PWD/target/services.log"
aj_svc_wait=${ASYNCJOBS_SERVICES_WAIT:-60} # seconds each server may take to answer
aj_svc_apt_updated=

aj_say() { echo "asyncjobs: $*"; }
aj_log() { echo "[$(date +%T)] $*" >>"$aj_svc_log"; }
# A URL without its password.
aj_redact() { sed 's#^\([a-z]*://[^:/@]*\):[^@]*@#\1:***@#' <<<"$1"; }

# aj_port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
aj_port_open() { timeout 2 bash -c ": <>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# aj_wait_port PORT PID-OR-EMPTY: waits up to aj_svc_wait seconds for the port;
# gives up early when PID (the server just started) has died.
aj_wait_port() {
  local i
  for ((i = 0; i < aj_svc_wait * 4; i++)); do
    aj_port_open "$1" && return 0
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
    sleep 0.25
  done
  return 1
}

# aj_may_start WHAT: whether this run may install and start servers; sets aj_why.
aj_may_start() {
  if [ "${ASYNCJOBS_SERVICES_START:-1}" = 0 ]; then
    aj_why="nothing answers on 127.0.0.1:$2 and ASYNCJOBS_SERVICES_START=0 forbids starting $1"
    return 1
  fi
  if [ "$(id -u)" != 0 ]; then
    aj_why="nothing answers on 127.0.0.1:$2 and only root can install and start $1"
    return 1
  fi
}

# aj_apt_install PKG...: installs the packages (apt-get update once per run).
aj_apt_install() {
  command -v apt-get >/dev/null 2>&1 || { aj_why="apt-get not found: install $* by hand"; return 1; }
  aj_say "installing $* (log: $aj_svc_log)"
  if [ -z "$aj_svc_apt_updated" ]; then
    apt-get update -q >>"$aj_svc_log" 2>&1 || { aj_why="apt-get update failed (see $aj_svc_log)"; return 1; }
    aj_svc_apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$aj_svc_log" 2>&1 ||
    { aj_why="apt-get install $* failed (see $aj_svc_log)"; return 1; }
}

# ---- PostgreSQL --------------------------------------------------------------

aj_psql() { psql -h 127.0.0.1 -p "$aj_pg_port" -U postgres -w -X -q -At -v ON_ERROR_STOP=1 "$@"; }

# The newest installed server version, e.g. 15.
aj_pg_version() { ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1; }

# aj_pg_trust VER: trust auth for 127.0.0.1 in the main cluster's pg_hba.conf.
aj_pg_trust() {
  local hba=/etc/postgresql/$1/main/pg_hba.conf
  [ -f "$hba" ] || { aj_why="$hba not found"; return 1; }
  grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba" && return 0
  aj_log "PostgreSQL: adding 'host all all 127.0.0.1/32 trust' to $hba"
  # First match wins: the line goes first.
  sed -i '1i host all all 127.0.0.1/32 trust  # added by asyncjobs tools/services.sh' "$hba"
}

# Installs, configures and starts cluster <ver>/main on 127.0.0.1:aj_pg_port.
aj_pg_start() {
  aj_may_start PostgreSQL "$aj_pg_port" || return 1
  if [ -z "$(aj_pg_version)" ] || ! command -v pg_ctlcluster >/dev/null || ! command -v psql >/dev/null; then
    aj_apt_install postgresql postgresql-client || return 1
  fi
  local ver; ver=$(aj_pg_version)
  [ -n "$ver" ] || { aj_why="no server under /usr/lib/postgresql after installing postgresql"; return 1; }
  local state; state=$(pg_lsclusters -h 2>/dev/null | awk -v v="$ver" '$1 == v && $2 == "main" { print $4 }')
  if [ -z "$state" ]; then
    aj_log "PostgreSQL: pg_createcluster $ver main"
    pg_createcluster -p "$aj_pg_port" "$ver" main >>"$aj_svc_log" 2>&1 ||
      { aj_why="pg_createcluster $ver main failed (see $aj_svc_log)"; return 1; }
  elif [ "$state" = online ]; then
    # Started by the package's postinst just now, or someone else's cluster on
    # another port: not reconfigured or restarted here.
    aj_port_open "$aj_pg_port" && return 0
    aj_why="cluster $ver/main is running but nothing answers on 127.0.0.1:$aj_pg_port"
    return 1
  fi
  # listen_addresses in conf.d (pg_conftool would write 127.0.0.1 unquoted);
  # the port in postgresql.conf, where pg_lsclusters reads it.
  local etc=/etc/postgresql/$ver/main
  { mkdir -p "$etc/conf.d" &&
    echo "listen_addresses = '127.0.0.1'  # asyncjobs tools/services.sh" >"$etc/conf.d/asyncjobs.conf" &&
    { grep -q "^include_dir = 'conf.d'" "$etc/postgresql.conf" || echo "include_dir = 'conf.d'" >>"$etc/postgresql.conf"; } &&
    pg_conftool "$ver" main set port "$aj_pg_port"; } >>"$aj_svc_log" 2>&1 ||
    { aj_why="could not configure cluster $ver/main (see $aj_svc_log)"; return 1; }
  aj_pg_trust "$ver" || return 1
  aj_say "starting PostgreSQL $ver (cluster main) on 127.0.0.1:$aj_pg_port"
  pg_ctlcluster "$ver" main start >>"$aj_svc_log" 2>&1 ||
    { aj_why="pg_ctlcluster $ver main start failed (see $aj_svc_log and /var/log/postgresql/)"; return 1; }
  aj_wait_port "$aj_pg_port" ||
    { aj_why="PostgreSQL $ver did not answer on 127.0.0.1:$aj_pg_port within ${aj_svc_wait}s"; return 1; }
}

aj_pg_setup() {
  aj_pg_port=${ASYNCJOBS_PG_PORT:-5432}
  if ! aj_port_open "$aj_pg_port"; then
    aj_pg_start || return 1
  fi
  if ! command -v psql >/dev/null; then
    { [ "$(id -u)" = 0 ] && [ "${ASYNCJOBS_SERVICES_START:-1}" != 0 ] && aj_apt_install postgresql-client; } ||
      { aj_why="a server answers on 127.0.0.1:$aj_pg_port but psql is missing (apt-get install postgresql-client)"; return 1; }
  fi
  if ! aj_psql -d postgres -c 'select 1' >/dev/null 2>>"$aj_svc_log"; then
    # A Debian cluster asks for a password over TCP; as root, trust 127.0.0.1.
    local ver; ver=$(aj_pg_version)
    if [ "$(id -u)" = 0 ] && [ "${ASYNCJOBS_SERVICES_START:-1}" != 0 ] && [ -n "$ver" ] &&
      [ "$(pg_lsclusters -h 2>/dev/null | awk -v v="$ver" '$1 == v && $2 == "main" { print $3 }')" = "$aj_pg_port" ] &&
      aj_pg_trust "$ver" && pg_ctlcluster "$ver" main reload >>"$aj_svc_log" 2>&1; then
      sleep 0.5
    fi
    aj_psql -d postgres -c 'select 1' >/dev/null 2>>"$aj_svc_log" ||
      { aj_why="a server answers on 127.0.0.1:$aj_pg_port but user postgres cannot log in without a password"; return 1; }
  fi
  if [ "$(aj_psql -d postgres -c "select 1 from pg_database where datname = 'test'")" != 1 ]; then
    aj_psql -d postgres -c 'create database test' >>"$aj_svc_log" 2>&1 ||
      { aj_why="could not create database test (see $aj_svc_log)"; return 1; }
  fi
  aj_url="postgres://postgres@127.0.0.1:$aj_pg_port/test"
}

# ---- MariaDB -----------------------------------------------------------------

aj_mysql() { mysql -h 127.0.0.1 -P "$aj_my_port" -u root --connect-timeout=5 "$@"; }

aj_my_server() { for b in /usr/sbin/mariadbd /usr/sbin/mysqld; do [ -x "$b" ] && { echo "$b"; return 0; }; done; return 1; }

# Installs, initializes and starts mariadbd on 127.0.0.1:aj_my_port.
aj_my_start() {
  aj_may_start MariaDB "$aj_my_port" || return 1
  local installed=
  if ! aj_my_server >/dev/null || ! command -v mysql >/dev/null; then
    aj_apt_install mariadb-server mariadb-client || return 1
    installed=1
  fi
  local bin; bin=$(aj_my_server) || { aj_why="no mariadbd after installing mariadb-server"; return 1; }
  if pidof mariadbd mysqld >/dev/null 2>&1; then
    # Started by the package's postinst just now (give it time), or another instance.
    if [ -n "$installed" ]; then aj_wait_port "$aj_my_port" "$(pidof -s mariadbd mysqld)" && return 0; fi
    aj_why="a MariaDB server is running but nothing answers on 127.0.0.1:$aj_my_port"
    return 1
  fi
  id mysql >/dev/null 2>&1 || { aj_why="user mysql does not exist"; return 1; }
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld || { aj_why="could not create /run/mysqld"; return 1; }
  if [ ! -d /var/lib/mysql/mysql ]; then
    aj_log "MariaDB: mariadb-install-db"
    mysql_install_db --user=mysql --datadir=/var/lib/mysql >>"$aj_svc_log" 2>&1 ||
      { aj_why="mysql_install_db failed (see $aj_svc_log)"; return 1; }
  fi
  aj_say "starting MariaDB ($bin) on 127.0.0.1:$aj_my_port"
  local pidfile=/run/mysqld/asyncjobs-start.pid
  start-stop-daemon --start --background --make-pidfile --pidfile "$pidfile" --output "$aj_svc_log.mariadbd" \
    --exec "$bin" -- --user=mysql --bind-address=127.0.0.1 --port="$aj_my_port" >>"$aj_svc_log" 2>&1 ||
    { aj_why="start-stop-daemon could not start $bin (see $aj_svc_log)"; return 1; }
  local pid; pid=$(cat "$pidfile" 2>/dev/null)
  aj_wait_port "$aj_my_port" "${pid:-0}" && return 0
  if kill -0 "${pid:-0}" 2>/dev/null; then
    aj_why="MariaDB did not answer on 127.0.0.1:$aj_my_port within ${aj_svc_wait}s"
  else
    aj_why="$bin exited at start"
  fi
  aj_why="$aj_why (see $aj_svc_log.mariadbd, /var/log/mysql/)"
  return 1
}

# Debian's root@localhost logs in by unix socket only: as root, add
# root@127.0.0.1 with an empty password (over the socket) for TCP clients.
aj_my_fix_root() {
  [ "$(id -u)" = 0 ] && [ "${ASYNCJOBS_SERVICES_START:-1}" != 0 ] || return 1
  aj_log "MariaDB: creating root@127.0.0.1 with an empty password"
  mysql -u root --connect-timeout=5 -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;" >>"$aj_svc_log" 2>&1 || return 1
  aj_mysql -e 'select 1' >/dev/null 2>&1 && return 0
  # Without skip-name-resolve, 127.0.0.1 is root@localhost.
  mysql -u root --connect-timeout=5 -e "ALTER USER 'root'@'localhost'
    IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;" >>"$aj_svc_log" 2>&1
}

aj_my_setup() {
  aj_my_port=${ASYNCJOBS_MYSQL_PORT:-3306}
  if ! aj_port_open "$aj_my_port"; then
    aj_my_start || return 1
  fi
  if ! command -v mysql >/dev/null; then
    { [ "$(id -u)" = 0 ] && [ "${ASYNCJOBS_SERVICES_START:-1}" != 0 ] && aj_apt_install mariadb-client; } ||
      { aj_why="a server answers on 127.0.0.1:$aj_my_port but the mysql client is missing (apt-get install mariadb-client)"; return 1; }
  fi
  if ! aj_mysql -e 'select 1' >/dev/null 2>>"$aj_svc_log"; then
    aj_my_fix_root
    aj_mysql -e 'select 1' >/dev/null 2>>"$aj_svc_log" ||
      { aj_why="a server answers on 127.0.0.1:$aj_my_port but root cannot log in over TCP without a password"; return 1; }
  fi
  aj_mysql -e 'create database if not exists test' >>"$aj_svc_log" 2>&1 ||
    { aj_why="could not create database test (see $aj_svc_log)"; return 1; }
  aj_url="mysql://root@127.0.0.1:$aj_my_port/test"
}

# ---- both --------------------------------------------------------------------

# aj_service ENGINE VAR SETUP: sets and exports VAR, or unsets it; one summary line.
aj_service() {
  local engine=$1 var=$2 setup=$3 aj_why="" aj_url=""
  local given=${!var:-}
  if [ "$given" = skip ]; then
    unset "$var"
    aj_say "$engine store suites SKIPPED: $var=skip"
  elif [ -n "$given" ]; then
    export "$var"
    aj_say "$engine store suites use $(aj_redact "$given") (from $var; nothing started)"
  elif "$setup" && [ -n "$aj_url" ]; then
    export "$var=$aj_url"
    aj_say "$engine store suites use $aj_url"
  else
    unset "$var"
    aj_say "$engine store suites SKIPPED: ${aj_why:-unknown reason}"
  fi
  return 0
}

{ mkdir -p "${aj_svc_log%/*}" && : >>"$aj_svc_log"; } 2>/dev/null || aj_svc_log=/dev/null
aj_service PostgreSQL ASYNCJOBS_TEST_POSTGRES aj_pg_setup || true
aj_service MariaDB ASYNCJOBS_TEST_MYSQL aj_my_setup || true
