# shellcheck shell=bash
# Shared helpers of the benchmark scripts (sourced, not run).

# Waits (up to $2 s) for the regex $3 in file $1 while process $4 lives.
# Polls every 10 ms (a cold start's time includes the poll's lag).
wait_for_line() {
  local file=$1 secs=$2 re=$3 pid=$4 i
  for ((i = 0; i < secs * 100; i++)); do
    grep -qE "$re" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.01
  done
  return 1
}

now_ns() { date +%s%N; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
human() { python3 -c "
import sys
n = float(sys.argv[1])
for u in ('B', 'KiB', 'MiB', 'GiB'):
    if n < 1024 or u == 'GiB':
        print(f'{n:.1f} {u}' if u != 'B' else f'{int(n)} B'); break
    n /= 1024" "$1"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# rafs_fresh_cache DIR: the `rafs mount` flags of a disk cache that starts
# empty (DIR is emptied), one per line: a cold run's cache is empty, as
# nydusd's fresh blobcache is in the same benches. RAFS_BENCH_RAFS_CACHE=0:
# none (memory only). Use: mapfile -t args < <(rafs_fresh_cache DIR).
rafs_fresh_cache() {
  [ "${RAFS_BENCH_RAFS_CACHE:-1}" = 1 ] || return 0
  rm -rf "$1" && mkdir -p "$1"
  printf '%s\n' --cache-dir "$1"
}
