#!/usr/bin/env bash
# Daemon memory against the number of files: the peak RSS (VmHWM) of the
# `rafs mount` daemon, and of nydusd when NYDUSD and NYDUS_IMAGE are set, after
# touching every file of trees of N small files.
#
# Trees: N files of 200..599 bytes (deterministic content: a header line and
# the sha256 of the index, repeated), 100 per directory, 100 directories per
# top-level directory (so N = 200k has 20 top-level, 2000 leaf directories),
# mtimes fixed (@0); generated once under $RAFS_BENCH_CACHE/rss/files-N.
# Images: rafs create (defaults, rebuilt every run: the system under test;
# mounted with --blobs DIR and a fresh --cache-dir per mount, or memory
# only with RAFS_BENCH_RAFS_CACHE=0); nydus-image create
# -t dir-rafs (built once; fs-version and cache as in scripts/bench-nydus.sh:
# v6 with a fresh blobcache dir per mount by default).
#
# Each measurement: page cache dropped, a fresh mount, then a stat walk
#   find MNT -printf '%p %s %m %U %G %T@ %n %i\n' >/dev/null
# and a read of every file
#   find MNT -type f -print0 | xargs -0 cat >/dev/null
# and the daemon's VmHWM (peak), RssAnon and RssFile (after the walks: heap
# vs. mapped files such as an mmapped bootstrap) are read before it is
# stopped. The median of RAFS_BENCH_REPS such mounts is reported.
#
# Rows: N. Columns: rafs VmHWM, nydusd VmHWM, rafs/nydusd, each daemon's
# RssAnon/RssFile at the end, and the bootstrap sizes. Below: each daemon's
# slope of VmHWM and of RssAnon in MiB per 100k files (least squares over the
# rows): "flat in the number of files" is issue 12's target.
#
# usage: scripts/bench-rss.sh              (root)
#        RAFS_BIN=/path/rafs NYDUSD=... NYDUS_IMAGE=... RAFS_BENCH_REPS=1 scripts/bench-rss.sh
# env:   RAFS_BIN (default: $repo/target/release/rafs, built by cargo build
#          --release; when set, nothing is built)
#        RAFS_BENCH_CACHE (default /var/tmp/rafs-bench): trees and images
#        RAFS_RSS_COUNTS (default "10000 50000 200000"): the values of N
#        RAFS_BENCH_REPS (default 3)
#        RAFS_BENCH_RAFS_CACHE (default 1: a fresh --cache-dir per rafs mount; 0: none)
#        NYDUSD, NYDUS_IMAGE, NYDUS_FS_VERSION (default 6): see bench-nydus.sh
# needs: fuse3, python3
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${RAFS_BENCH_CACHE:-/var/tmp/rafs-bench}
rafs=${RAFS_BIN:-$repo/target/release/rafs}
counts=${RAFS_RSS_COUNTS:-10000 50000 200000}
reps=${RAFS_BENCH_REPS:-3}
# shellcheck source=scripts/bench-lib.sh
. "$repo/scripts/bench-lib.sh"
# shellcheck source=scripts/bench-nydus.sh
. "$repo/scripts/bench-nydus.sh"

[ "$(id -u)" = 0 ] || { echo "run as root (mounts, drop_caches)" >&2; exit 1; }
command -v fusermount3 >/dev/null || { echo "missing fusermount3 (apt-get install fuse3)" >&2; exit 1; }
[ -n "${RAFS_BIN:-}" ] || (cd "$repo" && cargo build --release --quiet)
[ -x "$rafs" ] || { echo "no rafs binary at $rafs" >&2; exit 1; }
daemons=rafs
nydus_available && daemons+=" nydusd"
mkdir -p "$cache/rss"

# files_tree N: prints the tree's path, generating it once.
files_tree() {
  local n=$1 dest=$cache/rss/files-$1
  if [ ! -d "$dest" ]; then
    echo "generating $n files in $dest (once)" >&2
    rm -rf "$dest.partial"
    python3 - "$n" "$dest.partial" <<'EOF'
import hashlib, os, sys
n, root = int(sys.argv[1]), sys.argv[2]
dirs = []
for i in range(n):
    d = os.path.join(root, f"d{i // 10000:03d}", f"d{i // 100 % 100:02d}")
    if i % 100 == 0:
        os.makedirs(d)
        dirs.append(d)
    size = 200 + (i * 7919) % 400
    body = f"file {i}\n".encode() + hashlib.sha256(str(i).encode()).hexdigest().encode() * 10
    with open(os.path.join(d, f"f{i % 100:02d}"), "wb") as f:
        f.write(body[:size])
    os.utime(os.path.join(d, f"f{i % 100:02d}"), (0, 0))
for d in sorted({os.path.dirname(x) for x in dirs} | set(dirs) | {root}, key=len, reverse=True):
    os.utime(d, (0, 0))
EOF
    mv "$dest.partial" "$dest"
  fi
  echo "$dest"
}

# rafs_mount IMG MNT: starts the daemon, waits (up to 60 s) for its
# "mounted" line; its pid goes to $work/rafs.pid.
rafs_mount() {
  local img=$1 mnt=$2 pid cache_args
  : >"$work/rafs.out"
  mapfile -t cache_args < <(rafs_fresh_cache "$work/rafs-cache")
  "$rafs" mount "$img/bootstrap" "$mnt" --blobs "$img/blobs" "${cache_args[@]}" \
    </dev/null >"$work/rafs.out" 2>>"$work/rafs.err" &
  pid=$!
  echo "$pid" >"$work/rafs.pid"
  wait_for_line "$work/rafs.out" 60 '^rafs: mounted' "$pid" && return 0
  echo "rafs mount did not become ready:" >&2
  tail -5 "$work/rafs.err" >&2
  return 1
}

# measure DAEMON IMGDIR: one cold mount, both walks; prints "VmHWM RssAnon
# RssFile" in kB.
measure() {
  local d=$1 img=$2 mnt=$work/mnt pid anon file
  drop_caches
  case $d in
    rafs) rafs_mount "$img/rafs" "$mnt" ;;
    nydusd)
      rm -rf "$work/nydus-cache" && mkdir -p "$work/nydus-cache"
      nydus_config "$img/nydus/blobs" "$work/nydus-cache" >"$work/nydusd.json"
      nydus_mount "$img/nydus/bootstrap" "$mnt" "$work/nydusd.json" "$work/nydusd.log" "$work/nydusd.pid"
      ;;
  esac
  find "$mnt" -printf '%p %s %m %U %G %T@ %n %i\n' >/dev/null
  find "$mnt" -type f -print0 | xargs -0 cat >/dev/null
  pid=$(cat "$work/$d.pid")
  anon=$(awk '/^RssAnon/ { print $2 }' "/proc/$pid/status")
  file=$(awk '/^RssFile/ { print $2 }' "/proc/$pid/status")
  echo "$(daemon_stop "$pid" "$mnt") $anon $file"
}

mib() { awk -v k="${1:-0}" 'BEGIN { if (k > 0) printf "%.1f", k / 1024; else print "-" }'; }
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }'; }
# slope "N KB" lines on stdin: least-squares MiB per 100k files.
slope() {
  awk '{ x = $1 / 100000; y = $2 / 1024; n++; sx += x; sy += y; sxx += x * x; sxy += x * y }
    END { d = n * sxx - sx * sx; if (n < 2 || d == 0) print "-"; else printf "%.1f", (n * sxy - sx * sy) / d }'
}

work=$(mktemp -d /var/tmp/rafs-bench-rss.XXXXXX)
cleanup() {
  local d
  for d in rafs nydusd; do
    [ -f "$work/$d.pid" ] && kill -0 "$(cat "$work/$d.pid")" 2>/dev/null &&
      daemon_stop "$(cat "$work/$d.pid")" "$work/mnt" >/dev/null
  done
  mountpoint -q "$work/mnt" && umount -l "$work/mnt"
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/mnt"

declare -A hwm anon file size
for n in $counts; do
  src=$(files_tree "$n")
  img=$cache/rss/img-$n
  mkdir -p "$img"
  echo "rafs create of $n files" >&2
  rm -rf "$img/rafs"
  "$rafs" create "$src" -o "$img/rafs" --no-progress >/dev/null
  size[$n,rafs]=$(stat -c %s "$img/rafs/bootstrap")
  if [[ " $daemons " == *" nydusd "* ]]; then
    nydus_create "$src" "$img/nydus-v$(nydus_fs_version)"
    ln -sfn "nydus-v$(nydus_fs_version)" "$img/nydus"
    size[$n,nydusd]=$(stat -c %s "$img/nydus/bootstrap")
  fi
  for d in $daemons; do
    : >"$work/vals"
    for ((r = 0; r < reps; r++)); do measure "$d" "$img" >>"$work/vals"; done
    hwm[$n,$d]=$(median "$(cut -d' ' -f1 "$work/vals")")
    anon[$n,$d]=$(median "$(cut -d' ' -f2 "$work/vals")")
    file[$n,$d]=$(median "$(cut -d' ' -f3 "$work/vals")")
    echo "N=$n $d VmHWM RssAnon RssFile (kB): $(tr "\n" " " <"$work/vals")" >&2
  done
done

echo
echo "Daemon peak RSS (VmHWM, MiB, median of $reps cold mounts) after a stat walk and a read of every file."
echo
echo "| files | rafs VmHWM | nydusd VmHWM | rafs/nydusd | rafs anon/file | nydusd anon/file | rafs bootstrap | nydus bootstrap |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for n in $counts; do
  echo "| $n | $(mib "${hwm[$n,rafs]:-}") | $(mib "${hwm[$n,nydusd]:-}") | $(ratio "${hwm[$n,rafs]:-}" "${hwm[$n,nydusd]:-}") |" \
    "$(mib "${anon[$n,rafs]:-}")/$(mib "${file[$n,rafs]:-}") | $(mib "${anon[$n,nydusd]:-}")/$(mib "${file[$n,nydusd]:-}") |" \
    "$(mib "$((${size[$n,rafs]:-0} / 1024))") MiB | $(mib "$((${size[$n,nydusd]:-0} / 1024))") MiB |"
done
echo
for d in $daemons; do
  s=$(for n in $counts; do echo "$n ${hwm[$n,$d]}"; done | slope)
  a=$(for n in $counts; do echo "$n ${anon[$n,$d]}"; done | slope)
  echo "- $d: VmHWM $s MiB, RssAnon $a MiB per 100k files (least-squares slopes over N)"
done
echo
nyd=
[[ " $daemons " == *" nydusd "* ]] && nyd=", nydusd with nydus-image create --fs-version $(nydus_fs_version) defaults"
rafs_cache_note="a fresh --cache-dir per mount"
[ "${RAFS_BENCH_RAFS_CACHE:-1}" = 1 ] || rafs_cache_note="no disk cache (memory only)"
echo "rafs: $rafs create defaults, mounted with --blobs and $rafs_cache_note$nyd. Machine: $(nproc) cores, kernel $(uname -r); shared machine, figures noisy."
