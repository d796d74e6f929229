#!/usr/bin/env bash
# Read benchmarks: `rafs mount` against the native directory, kernel EROFS,
# kernel squashfs, squashfuse and (when NYDUSD and NYDUS_IMAGE are set)
# nydusd, on two trees:
#
# - rootfs: a Debian bookworm minbase rootfs (scripts/debootstrap-rootfs.sh);
# - vendor: `cargo vendor` of this project's own dependencies: thousands of
#           small source files, mtimes fixed (touch -d @0).
#
# Each tree gets one large file, large.bin (256 MiB of the tree's own files
# concatenated: real, compressible data), for the fio workloads. Images:
# mkfs.erofs -zlz4hc, mksquashfs -comp zstd, rafs create (defaults, blobs
# local, mounted with --blobs DIR and a fresh --cache-dir per mount, or memory
# only with RAFS_BENCH_RAFS_CACHE=0), and
# nydus-image create -t dir-rafs (defaults, RAFS v6 unless NYDUS_FS_VERSION=5,
# blobs local) served by nydusd's localfs backend (--rlimit-nofile 0).
# nydusd refuses a v6 image without its blobcache, so each nydusd mount gets
# a fresh, empty blobcache directory under the work dir (fetched data is
# written there too); with NYDUS_FS_VERSION=5 it uses "dummycache" (memory
# only, like rafs). See scripts/bench-nydus.sh. Workloads, each cold (page
# cache dropped and a fresh mount before every run) and warm (one warm-up
# run, same mount):
#
#   full   tar cf - -C MNT . | wc -c          (every byte of every file)
#   meta   find MNT -printf '%p %s %m %U %G %T@ %n %i\n'   (every stat field)
#   seq    fio: sequential 1 MiB reads of large.bin (--invalidate=0: the
#          cache state is the mode's, not fio's)
#   rand   fio: 8192 random 4 KiB reads of large.bin (fixed seed)
#   par8   find MNT -type f | xargs -P8 cat   (8 parallel readers)
#
# Each workload runs RAFS_BENCH_REPS times per system and mode. Cold runs
# interleave: round r runs every system once (a hyperfine run each, the
# fresh mount in --prepare), starting r systems further along the list, so
# drift of a shared machine over the minutes of a run lands on every
# system alike; the per-run times are printed below the table. Warm runs
# (hyperfine, one warm-up) then use the mount each system's last cold run
# left. Rows: tree x workload x mode.
# Columns: each system's median seconds with its ratio to native, then
# rafs/erofs and (with nydusd) rafs/nydusd. Below the table, per tree: the
# peak RSS (VmHWM) of the rafs daemon and of nydusd over all their mounts,
# then per workload (the largest of the daemons that served it).
#
# usage: scripts/bench-read.sh            (root)
#        RAFS_BIN=/path/rafs NYDUSD=... NYDUS_IMAGE=... RAFS_BENCH_REPS=1 \
#          RAFS_BENCH_WORKLOADS="full rand" scripts/bench-read.sh
# env:   RAFS_BIN (default: $repo/target/release/rafs, built by cargo build
#          --release; when set, nothing is built)
#        RAFS_BENCH_CACHE (default /var/tmp/rafs-bench): trees and images
#        RAFS_BENCH_TREES (default "rootfs vendor")
#        RAFS_BENCH_SYSTEMS (default "native erofs squashfs squashfuse rafs",
#          plus "nydusd" when NYDUSD and NYDUS_IMAGE are set)
#        RAFS_BENCH_WORKLOADS (default "full meta seq rand par8")
#        RAFS_BENCH_REPS (default 3)
#        RAFS_BENCH_RAFS_CACHE (default 1: each rafs mount gets a fresh
#          --cache-dir, as nydusd gets a fresh blobcache; 0: memory only)
#        RAFS_BENCH_MOUNT_ARGS (extra `rafs mount` flags)
#        NYDUSD, NYDUS_IMAGE, NYDUS_FS_VERSION (default 6): see bench-nydus.sh
# needs: squashfs-tools squashfuse erofs-utils fio hyperfine fuse3 debootstrap
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
self=$repo/scripts/bench-read.sh
cache=${RAFS_BENCH_CACHE:-/var/tmp/rafs-bench}
rafs=${RAFS_BIN:-$repo/target/release/rafs}
# shellcheck source=scripts/bench-lib.sh
. "$repo/scripts/bench-lib.sh"
# shellcheck source=scripts/bench-nydus.sh
. "$repo/scripts/bench-nydus.sh"

# ---- mount control, also run by hyperfine's --prepare as `$self __ctl ...`
# Mounts live under $BENCH_WORK/mnt/SYS; images under $cache/images/TREE.
mnt_of() { echo "$BENCH_WORK/mnt/$1"; }

do_mount() { # SYS TREE
  local sys=$1 tree=$2 mnt img=$cache/images/$2
  mnt=$(mnt_of "$sys")
  mkdir -p "$mnt"
  case $sys in
    native) ;;
    erofs) mount -t erofs -o loop,ro "$img/img.erofs" "$mnt" ;;
    squashfs) mount -t squashfs -o loop,ro "$img/img.sqfs" "$mnt" ;;
    squashfuse) squashfuse "$img/img.sqfs" "$mnt" ;;
    rafs)
      local cache_args
      mapfile -t cache_args < <(rafs_fresh_cache "$BENCH_WORK/rafs-cache")
      # shellcheck disable=SC2086 # RAFS_BENCH_MOUNT_ARGS is a list of flags
      "$rafs" mount "$img/rafs/bootstrap" "$mnt" --blobs "$img/rafs/blobs" "${cache_args[@]}" \
        ${RAFS_BENCH_MOUNT_ARGS:-} </dev/null >"$BENCH_WORK/rafs.out" 2>>"$BENCH_WORK/rafs.err" &
      echo $! >"$BENCH_WORK/rafs.pid"
      wait_for_line "$BENCH_WORK/rafs.out" 30 '^rafs: mounted' "$!" && return 0
      echo "rafs mount did not become ready:" >&2
      tail -5 "$BENCH_WORK/rafs.err" >&2
      return 1
      ;;
    nydusd)
      rm -rf "$BENCH_WORK/nydus-cache" && mkdir -p "$BENCH_WORK/nydus-cache"
      nydus_config "$img/nydus/blobs" "$BENCH_WORK/nydus-cache" >"$BENCH_WORK/nydusd.json"
      nydus_mount "$img/nydus/bootstrap" "$mnt" "$BENCH_WORK/nydusd.json" \
        "$BENCH_WORK/nydusd.log" "$BENCH_WORK/nydusd.pid"
      ;;
  esac
}

do_umount() { # SYS
  local sys=$1 mnt pid h
  mnt=$(mnt_of "$sys")
  case $sys in
    native) ;;
    erofs | squashfs) umount "$mnt" ;;
    squashfuse) fusermount3 -u "$mnt" ;;
    rafs | nydusd)
      # Gone or a zombie (our own child until `wait`), and unmounted.
      pid=$(cat "$BENCH_WORK/$sys.pid")
      # One line per daemon: the workload it served (its cold runs' last
      # mount also serves the warm runs), then its VmHWM in kB.
      h=$(daemon_stop "$pid" "$mnt")
      [ -z "$h" ] || echo "$(cat "$BENCH_WORK/$sys.serving" 2>/dev/null || echo mount) $h" >>"$BENCH_WORK/$sys.hwm"
      ;;
  esac
}


if [ "${1:-}" = __ctl ]; then
  case $2 in
    cold) do_umount "$3"; drop_caches; do_mount "$3" "$4"; echo "$5" >"$BENCH_WORK/$3.serving" ;;
    *) echo "bad ctl $2" >&2; exit 2 ;;
  esac
  exit 0
fi

# ---- trees and images
for t in mksquashfs squashfuse mkfs.erofs fio hyperfine fusermount3; do
  command -v "$t" >/dev/null || {
    echo "missing $t (apt-get install squashfs-tools squashfuse erofs-utils fio hyperfine fuse3)" >&2
    exit 1
  }
done
[ "$(id -u)" = 0 ] || { echo "run as root (mounts, drop_caches)" >&2; exit 1; }
trees=${RAFS_BENCH_TREES:-rootfs vendor}
default_systems="native erofs squashfs squashfuse rafs"
nydus_available && default_systems+=" nydusd"
systems=${RAFS_BENCH_SYSTEMS:-$default_systems}
workloads=${RAFS_BENCH_WORKLOADS:-full meta seq rand par8}
reps=${RAFS_BENCH_REPS:-3}
has_sys() { [[ " $systems " == *" $1 "* ]]; }
if has_sys nydusd && ! nydus_available; then
  echo "system nydusd needs NYDUSD and NYDUS_IMAGE (executables)" >&2
  exit 1
fi
mkdir -p "$cache/images"
[ -n "${RAFS_BIN:-}" ] || (cd "$repo" && cargo build --release --quiet)
[ -x "$rafs" ] || { echo "no rafs binary at $rafs" >&2; exit 1; }

vendor_tree() { # DEST
  local dest=$1 sync=()
  [ -f "$repo/fuzz/Cargo.toml" ] && sync=(--sync "$repo/fuzz/Cargo.toml")
  rm -rf "$dest.partial"
  cargo vendor --quiet --manifest-path "$repo/Cargo.toml" "${sync[@]}" "$dest.partial" >/dev/null
  mv "$dest.partial" "$dest"
}

# The tree as benchmarked: the source plus large.bin, mtimes fixed.
bench_tree() { # TREE -> prints its path
  local tree=$1 dest=$cache/$1-bench src
  if [ ! -d "$dest" ]; then
    echo "assembling $dest (once)" >&2
    case $tree in
      rootfs) src=$cache/rootfs; "$repo/scripts/debootstrap-rootfs.sh" "$src" >&2 ;;
      vendor) src=$cache/vendor; [ -d "$src" ] || vendor_tree "$src" ;;
      *) echo "unknown tree $tree" >&2; exit 1 ;;
    esac
    rm -rf "$dest.partial"
    cp -a "$src" "$dest.partial"
    find "$src" -type f -size +0 -print0 | sort -z >"$cache/$tree.files"
    { while :; do xargs -0 cat <"$cache/$tree.files" 2>/dev/null || break; done; } |
      head -c 256M >"$dest.partial/large.bin" || true
    find "$dest.partial" -exec touch -h -d @0 {} +
    mv "$dest.partial" "$dest"
  fi
  echo "$dest"
}

build_images() { # TREE SRC
  local img=$cache/images/$1 src=$2
  if [ ! -f "$img/done" ]; then
    echo "building EROFS and squashfs images of $1 (once)" >&2
    rm -rf "$img" && mkdir -p "$img"
    mkfs.erofs -zlz4hc "$img/img.erofs" "$src" >/dev/null
    mksquashfs "$src" "$img/img.sqfs" -comp zstd -no-progress -quiet >/dev/null
    touch "$img/done"
  fi
  # The system under test: rebuilt by this binary on every run.
  echo "rafs create $1" >&2
  rm -rf "$img/rafs"
  "$rafs" create "$src" -o "$img/rafs" --no-progress >/dev/null
  # nydus-image is fixed: built once per fs-version, linked as $img/nydus.
  if has_sys nydusd; then
    nydus_create "$src" "$img/nydus-v$(nydus_fs_version)"
    ln -sfn "nydus-v$(nydus_fs_version)" "$img/nydus"
  fi
}

# ---- measurement
workload() { # NAME MNT -> the command
  local m=$2
  case $1 in
    full) echo "tar cf - -C $m . | wc -c" ;;
    meta) printf '%s\n' "find $m -printf '%p %s %m %U %G %T@ %n %i\n' >/dev/null" ;;
    seq) echo "fio --name=seq --filename=$m/large.bin --readonly --rw=read --bs=1M --size=256M --ioengine=psync --invalidate=0 --output=/dev/null" ;;
    rand) echo "fio --name=rand --filename=$m/large.bin --readonly --rw=randread --bs=4k --size=256M --io_size=32M --randseed=42 --norandommap --ioengine=psync --invalidate=0 --output=/dev/null" ;;
    par8) echo "find $m -type f -print0 | xargs -0 -P8 -n 64 cat >/dev/null" ;;
  esac
}

json_median() { # JSON -> seconds
  grep -o '"median": *[0-9.e+-]*' "$1" | head -1 | awk -F: '{ printf "%.3f", $2 }'
}

# cold_once SYS TREE WORKLOAD: one cold run (fresh mount, page cache
# dropped): prints its seconds.
cold_once() {
  local sys=$1 tree=$2 w=$3 json=$BENCH_WORK/h.json
  hyperfine --shell=bash --runs 1 --export-json "$json" \
    --prepare "$self __ctl cold $sys $tree $w" "$(workload_on "$sys" "$tree" "$w")" \
    >/dev/null 2>>"$BENCH_WORK/hyperfine.err"
  json_median "$json"
}

# warm SYS TREE WORKLOAD: the median seconds of $reps runs after one
# warm-up, on the mount the last cold run left.
warm() {
  local json=$BENCH_WORK/h.json
  hyperfine --shell=bash --runs "$reps" --warmup 1 --export-json "$json" \
    "$(workload_on "$1" "$2" "$3")" >/dev/null 2>>"$BENCH_WORK/hyperfine.err"
  json_median "$json"
}

workload_on() { # SYS TREE WORKLOAD -> the command on that system's tree
  if [ "$1" = native ]; then workload "$3" "$cache/$2-bench"; else workload "$3" "$(mnt_of "$1")"; fi
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }'; }

export BENCH_WORK
BENCH_WORK=$(mktemp -d /var/tmp/rafs-bench-read.XXXXXX)
cleanup() {
  for s in $systems; do
    mountpoint -q "$(mnt_of "$s")" 2>/dev/null && { do_umount "$s" || umount -l "$(mnt_of "$s")"; }
  done
  rm -rf "$BENCH_WORK"
}
trap cleanup EXIT
export cache rafs self NYDUSD NYDUS_IMAGE NYDUS_FS_VERSION

declare -A result
for tree in $trees; do
  src=$(bench_tree "$tree")
  build_images "$tree" "$src"
  : >"$BENCH_WORK/rafs.hwm"
  : >"$BENCH_WORK/nydusd.hwm"
  read -ra sys_list <<<"$systems"
  for sys in "${sys_list[@]}"; do
    do_mount "$sys" "$tree"
    echo mount >"$BENCH_WORK/$sys.serving"
  done
  for w in $workloads; do
    # Cold: rounds of one run per system, each round starting one system
    # further on, so a machine getting slower or faster mid-run moves every
    # system's median alike instead of the ratio between them.
    declare -A runs=()
    for ((r = 0; r < reps; r++)); do
      for ((i = 0; i < ${#sys_list[@]}; i++)); do
        sys=${sys_list[(i + r) % ${#sys_list[@]}]}
        runs[$sys]+=" $(cold_once "$sys" "$tree" "$w")"
      done
    done
    for sys in "${sys_list[@]}"; do
      result[$tree,$sys,$w,cold]=$(median <<<"${runs[$sys]}")
      result[$tree,$sys,$w,runs]=${runs[$sys]# }
      echo "$tree $sys $w cold ${result[$tree,$sys,$w,cold]} (each:${runs[$sys]})" >&2
    done
    unset runs
    # Warm: each system on the mount its last cold run left.
    for sys in "${sys_list[@]}"; do
      result[$tree,$sys,$w,warm]=$(warm "$sys" "$tree" "$w")
      echo "$tree $sys $w warm ${result[$tree,$sys,$w,warm]}" >&2
    done
  done
  for sys in "${sys_list[@]}"; do do_umount "$sys"; done
  for d in rafs nydusd; do
    result[$tree,hwm,$d]=$(awk '{ print $2 }' "$BENCH_WORK/$d.hwm" | sort -n | tail -1)
    for w in $workloads; do
      result[$tree,hwm,$d,$w]=$(awk -v w="$w" '$1 == w { print $2 }' "$BENCH_WORK/$d.hwm" | sort -n | tail -1)
    done
  done
  result[$tree,size]=$(du -sb --apparent-size "$src" | cut -f1)
  result[$tree,files]=$(find "$src" -type f | wc -l)
done

# ---- the table
cell() { # TREE SYS W MODE
  local v=${result[$1,$2,$3,$4]:-} n=${result[$1,native,$3,$4]:-}
  [ -n "$v" ] || { echo "-"; return; }
  if [ "$2" = native ] || [ -z "$n" ]; then echo "$v"; else echo "$v ($(ratio "$v" "$n")×)"; fi
}
mib() { awk -v k="${1:-0}" 'BEGIN { if (k > 0) printf "%.1f MiB", k / 1024; else print "-" }'; }
# The ratio columns: rafs against each of these systems that ran.
versus=()
for s in erofs nydusd; do has_sys rafs && has_sys "$s" && versus+=("$s"); done
echo
echo "Median seconds of $reps runs; (×) = ratio to native. Cold: page cache dropped and a fresh mount before each run."
echo
header="| tree | workload | mode |"
sep="| --- | --- | --- |"
for sys in $systems; do header+=" $sys |"; sep+=" ---: |"; done
for s in "${versus[@]}"; do header+=" rafs/$s |"; sep+=" ---: |"; done
echo "$header"
echo "$sep"
for tree in $trees; do
  for w in $workloads; do
    for mode in cold warm; do
      row="| $tree | $w | $mode |"
      for sys in $systems; do row+=" $(cell "$tree" "$sys" "$w" "$mode") |"; done
      for s in "${versus[@]}"; do
        row+=" $(ratio "${result[$tree,rafs,$w,$mode]:-0}" "${result[$tree,$s,$w,$mode]:-0}") |"
      done
      echo "$row"
    done
  done
done
echo
echo "Each cold run (s), in run order; the systems took turns, one run each per round:"
for tree in $trees; do
  for w in $workloads; do
    line="- $tree $w:"
    for sys in $systems; do line+=" $sys ${result[$tree,$sys,$w,runs]:-};"; done
    echo "${line%;}"
  done
done
echo
for tree in $trees; do
  line="- $tree: $(awk -v b="${result[$tree,size]}" 'BEGIN { printf "%.0f", b / 1048576 }') MiB in ${result[$tree,files]} files (incl. 256 MiB large.bin); daemon peak RSS (VmHWM):"
  has_sys rafs && line+=" rafs $(mib "${result[$tree,hwm,rafs]}")"
  has_sys nydusd && line+=", nydusd $(mib "${result[$tree,hwm,nydusd]}")"
  echo "$line"
  # Which workload sets the peak: each workload's largest VmHWM.
  line="  - peak RSS by workload (rafs"
  has_sys nydusd && line+=" / nydusd"
  line+="):"
  for w in $workloads; do
    line+=" $w $(mib "${result[$tree,hwm,rafs,$w]:-}")"
    has_sys nydusd && line+=" / $(mib "${result[$tree,hwm,nydusd,$w]:-}")"
    line+=";"
  done
  has_sys rafs && echo "${line%;}"
done
echo
nydus_note=
if has_sys nydusd; then
  nydus_note=", nydus-image create -t dir-rafs --fs-version $(nydus_fs_version) defaults (nydusd localfs backend, cache:"
  if [ "$(nydus_fs_version)" = 5 ]; then nydus_note+=" dummycache, memory only)"; else nydus_note+=" blobcache in a fresh dir per mount)"; fi
fi
rafs_cache_note="a fresh --cache-dir per mount"
[ "${RAFS_BENCH_RAFS_CACHE:-1}" = 1 ] || rafs_cache_note="no disk cache (memory only)"
echo "Images: mkfs.erofs -zlz4hc, mksquashfs -comp zstd, rafs create defaults (mounted with --blobs and $rafs_cache_note)$nydus_note. Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)."
echo "Targets (issue 12, not asserted): cold full read <= native and below nydusd; cold rand <= 3x native; rafs peak RSS below nydusd's; warm full read <= 1.5x EROFS."
