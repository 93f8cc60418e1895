#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests use answers on 127.0.0.1:5432 and lets
# the test user (postgres, no password) in over TCP:
#   1. installs Debian's PostgreSQL when its server is missing;
#   2. creates the Debian cluster when none exists;
#   3. lets user postgres in over loopback TCP without a password (Debian's
#      default pg_hba.conf asks for one): a "trust" line for 127.0.0.1/32 and
#      ::1/128, user postgres only, inserted once before Debian's own lines;
#   4. gives the cluster the settings dev and bench are measured with
#      (conf.d/groupmatch.conf, docs/performance.md): shared_buffers 4GB,
#      above a million customers' directory (~700 MB) and the memberships
#      of the ten-minute latency run (~2 GB); checkpoints at most
#      every 8 GB of WAL or 15 minutes, and full-page images compressed,
#      since each checkpoint makes the next write of every memberships
#      index page a full-page image;
#   5. reserves huge pages for shared_buffers (vm.nr_hugepages, root
#      only): PostgreSQL maps its shared memory with them when the kernel
#      has them (huge_pages = try, the default), which cut its CPU per
#      look-up by a fifth; where the kernel refuses, PostgreSQL runs
#      without them and this script says so;
#   6. starts the cluster (restarts it when a setting needing a restart
#      changed or reserved huge pages lie unused, else reloads it when it
#      already runs);
#   7. fails loudly when PostgreSQL still does not accept the test user.
# Tests never skip for a missing database. Safe to run again.
set -euo pipefail

shared_buffers_mb=4096
shared_buffers=$((shared_buffers_mb / 1024))GB
accepts() { psql -X -q -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -c 'select 1' >/dev/null 2>&1; }
setting() { psql -X -q -w -At -h 127.0.0.1 -p 5432 -U postgres -d postgres -c "show $1" 2>/dev/null; }
configured() {
  [ "$(setting shared_buffers)" = "$shared_buffers" ] && [ "$(setting max_wal_size)" = 8GB ] &&
    [ "$(setting checkpoint_timeout)" = 15min ] && [ "$(setting wal_compression)" = lz4 ]
}
# Huge pages for shared_buffers plus PostgreSQL's other shared memory
# (~120 MB at these settings; 320 MB leaves room).
# A kernel without huge pages reports none: nothing is wanted then.
meminfo() { awk -v k="$1:" '$1 == k {n = $2} END {print n + 0}' /proc/meminfo 2>/dev/null || echo 0; }
hugepage_kb=$(meminfo Hugepagesize)
hugepages_wanted=0
if [ "$hugepage_kb" -gt 0 ]; then hugepages_wanted=$(((shared_buffers_mb + 320) * 1024 / hugepage_kb)); fi
hugepages_reserved() { [ "$(meminfo HugePages_Total)" -ge "$hugepages_wanted" ]; }
# Some process (here: PostgreSQL) maps the reserved huge pages.
hugepages_mapped() { [ $(($(meminfo HugePages_Total) - $(meminfo HugePages_Free) + $(meminfo HugePages_Rsvd))) -gt 0 ]; }
hugepages_settled() { [ "$hugepages_wanted" -eq 0 ] || ! hugepages_reserved || hugepages_mapped; }
if command -v psql >/dev/null 2>&1 && accepts && configured && hugepages_reserved && hugepages_settled; then exit 0; fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "ensure-postgres: installing PostgreSQL from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  echo "ensure-postgres: creating cluster $version/main" >&2
  pg_createcluster --port 5432 "$version" main >/dev/null
fi

hba=/etc/postgresql/$version/main/pg_hba.conf
marker='# groupmatch tests: user postgres over loopback TCP without a password'
if ! grep -qF "$marker" "$hba"; then
  echo "ensure-postgres: letting user postgres in over loopback in $hba" >&2
  tmp=$(mktemp)
  {
    echo "$marker"
    echo "host    all             postgres        127.0.0.1/32            trust"
    echo "host    all             postgres        ::1/128                 trust"
    cat "$hba"
  } >"$tmp"
  cat "$tmp" >"$hba"
  rm -f "$tmp"
fi

conf=/etc/postgresql/$version/main/conf.d/groupmatch.conf
settings="# groupmatch: the settings dev and bench are measured with (docs/performance.md)
shared_buffers = $shared_buffers
max_wal_size = 8GB
checkpoint_timeout = 15min
wal_compression = lz4"
if [ "$(cat "$conf" 2>/dev/null)" != "$settings" ]; then
  echo "ensure-postgres: writing $conf" >&2
  mkdir -p "$(dirname "$conf")"
  printf '%s\n' "$settings" >"$conf"
fi

if ! hugepages_reserved; then
  echo "ensure-postgres: reserving $hugepages_wanted huge pages for shared_buffers" >&2
  echo "$hugepages_wanted" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
  if ! hugepages_reserved; then
    echo "ensure-postgres: warning: the kernel gave $(meminfo HugePages_Total) of $hugepages_wanted huge pages: PostgreSQL runs without them and benchmarks will differ" >&2
  fi
fi

status=$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}')
if [ "$status" = online ] && { [ "$(setting shared_buffers)" != "$shared_buffers" ] || ! hugepages_settled; }; then
  echo "ensure-postgres: restarting cluster $version/main for shared_buffers $shared_buffers in huge pages" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main restart
elif [ "$status" = online ]; then
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload
else
  echo "ensure-postgres: starting cluster $version/main" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi

for _ in $(seq 1 30); do
  if accepts; then
    if ! configured; then
      echo "ensure-postgres: warning: the server does not run with $conf (ALTER SYSTEM overrides conf.d): benchmarks will differ" >&2
    fi
    exit 0
  fi
  sleep 1
done
echo "ensure-postgres: PostgreSQL does not accept user postgres on 127.0.0.1:5432; the tests need it" >&2
tail -n 20 "/var/log/postgresql/postgresql-$version-main.log" >&2 || true
exit 1
