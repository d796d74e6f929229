#!/usr/bin/env bash
# Read benchmarks: `rafs mount` against the native directory, kernel EROFS,
# kernel squashfs and squashfuse, on two trees:
#
# - rootfs: a Debian bookworm minbase rootfs (scripts/debootstrap-rootfs.sh);
# - vendor: `cargo vendor` of this project's own dependencies: thousands of
#           small source files, mtimes fixed (touch -d @0).
#
# Each tree gets one large file, large.bin (256 MiB of the tree's own files
# concatenated: real, compressible data), for the fio workloads. Images:
# mkfs.erofs -zlz4hc, mksquashfs -comp zstd, rafs create (defaults, blobs
# local). Workloads, each cold (page cache dropped and a fresh mount before
# every run) and warm (one warm-up run, same mount):
#
#   full   tar cf - -C MNT . | wc -c          (every byte of every file)
#   meta   find MNT -printf '%p %s %m %U %G %T@ %n %i\n'   (every stat field)
#   seq    fio: sequential 1 MiB reads of large.bin (--invalidate=0: the
#          cache state is the mode's, not fio's)
#   rand   fio: 8192 random 4 KiB reads of large.bin (fixed seed)
#   par8   find MNT -type f | xargs -P8 cat   (8 parallel readers)
#
# hyperfine runs each RAFS_BENCH_REPS times; the table shows medians in
# seconds and the ratio to native, then rafs's ratios to EROFS, and the
# rafs daemon's peak RSS (VmHWM) over all its mounts of that tree.
#
# usage: scripts/bench-read.sh            (root; release build)
# env:   RAFS_BENCH_CACHE (default /var/tmp/rafs-bench): trees and images
#        RAFS_BENCH_TREES (default "rootfs vendor")
#        RAFS_BENCH_SYSTEMS (default "native erofs squashfs squashfuse rafs")
#        RAFS_BENCH_REPS (default 3)
# needs: squashfs-tools squashfuse erofs-utils fio hyperfine fuse3 debootstrap
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
self=$repo/scripts/bench-read.sh
cache=${RAFS_BENCH_CACHE:-/var/tmp/rafs-bench}
rafs=$repo/target/release/rafs

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
      "$rafs" mount "$img/rafs/bootstrap" "$mnt" --blobs "$img/rafs/blobs" \
        </dev/null >"$BENCH_WORK/rafs.out" 2>>"$BENCH_WORK/rafs.err" &
      echo $! >"$BENCH_WORK/rafs.pid"
      for _ in $(seq 600); do
        grep -q '^rafs: mounted' "$BENCH_WORK/rafs.out" 2>/dev/null && return 0
        kill -0 "$(cat "$BENCH_WORK/rafs.pid")" 2>/dev/null || break
        sleep 0.05
      done
      echo "rafs mount did not become ready:" >&2
      tail -5 "$BENCH_WORK/rafs.err" >&2
      return 1
      ;;
  esac
}

do_umount() { # SYS
  local sys=$1 mnt pid
  mnt=$(mnt_of "$sys")
  case $sys in
    native) ;;
    erofs | squashfs) umount "$mnt" ;;
    squashfuse) fusermount3 -u "$mnt" ;;
    rafs)
      pid=$(cat "$BENCH_WORK/rafs.pid")
      awk '/VmHWM/ { print $2 }' "/proc/$pid/status" >>"$BENCH_WORK/rafs.hwm"
      kill -TERM "$pid"
      # Gone or a zombie (our own child until `wait`), and unmounted.
      while [ -e "/proc/$pid" ] && ! grep -q ') Z' "/proc/$pid/stat" 2>/dev/null; do sleep 0.02; done
      while mountpoint -q "$mnt"; do sleep 0.02; done
      ;;
  esac
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

if [ "${1:-}" = __ctl ]; then
  case $2 in
    cold) do_umount "$3"; drop_caches; do_mount "$3" "$4" ;;
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
systems=${RAFS_BENCH_SYSTEMS:-native erofs squashfs squashfuse rafs}
reps=${RAFS_BENCH_REPS:-3}
mkdir -p "$cache/images"
(cd "$repo" && cargo build --release --quiet)

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
}

# ---- measurement
workload() { # NAME MNT -> the command
  local m=$2
  case $1 in
    full) echo "tar cf - -C $m . | wc -c" ;;
    meta) echo "find $m -printf '%p %s %m %U %G %T@ %n %i\n' >/dev/null" ;;
    seq) echo "fio --name=seq --filename=$m/large.bin --readonly --rw=read --bs=1M --size=256M --ioengine=psync --invalidate=0 --output=/dev/null" ;;
    rand) echo "fio --name=rand --filename=$m/large.bin --readonly --rw=randread --bs=4k --size=256M --io_size=32M --randseed=42 --norandommap --ioengine=psync --invalidate=0 --output=/dev/null" ;;
    par8) echo "find $m -type f -print0 | xargs -0 -P8 -n 64 cat >/dev/null" ;;
  esac
}

median() { # JSON -> seconds
  grep -o '"median": *[0-9.e+-]*' "$1" | head -1 | awk -F: '{ printf "%.3f", $2 }'
}

# measure SYS TREE WORKLOAD MODE: prints the median seconds.
measure() {
  local sys=$1 tree=$2 w=$3 mode=$4 cmd json=$BENCH_WORK/h.json
  cmd=$(workload "$w" "$(mnt_of "$sys")")
  [ "$sys" = native ] && cmd=$(workload "$w" "$cache/$tree-bench")
  if [ "$mode" = cold ]; then
    hyperfine --shell=bash --runs "$reps" --export-json "$json" \
      --prepare "$self __ctl cold $sys $tree" "$cmd" >/dev/null 2>>"$BENCH_WORK/hyperfine.err"
  else
    hyperfine --shell=bash --runs "$reps" --warmup 1 --export-json "$json" \
      "$cmd" >/dev/null 2>>"$BENCH_WORK/hyperfine.err"
  fi
  median "$json"
}

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
export cache rafs self

declare -A result
workloads="full meta seq rand par8"
for tree in $trees; do
  src=$(bench_tree "$tree")
  build_images "$tree" "$src"
  : >"$BENCH_WORK/rafs.hwm"
  for sys in $systems; do
    do_mount "$sys" "$tree"
    for w in $workloads; do
      for mode in cold warm; do
        result[$tree,$sys,$w,$mode]=$(measure "$sys" "$tree" "$w" "$mode")
        echo "$tree $sys $w $mode ${result[$tree,$sys,$w,$mode]}" >&2
      done
    done
    do_umount "$sys"
  done
  result[$tree,hwm]=$(sort -n "$BENCH_WORK/rafs.hwm" | tail -1)
  result[$tree,size]=$(du -sb --apparent-size "$src" | cut -f1)
  result[$tree,files]=$(find "$src" -type f | wc -l)
done

# ---- the table
cell() { # TREE SYS W MODE
  local v=${result[$1,$2,$3,$4]:-} n=${result[$1,native,$3,$4]:-}
  [ -n "$v" ] || { echo "-"; return; }
  if [ "$2" = native ] || [ -z "$n" ]; then echo "$v"; else echo "$v ($(ratio "$v" "$n")×)"; fi
}
echo
echo "Median seconds of $reps runs; (×) = ratio to native. Cold: page cache dropped and a fresh mount before each run."
echo
header="| tree | workload | mode |"
sep="| --- | --- | --- |"
for sys in $systems; do header+=" $sys |"; sep+=" ---: |"; done
echo "$header rafs/erofs |"
echo "$sep ---: |"
for tree in $trees; do
  for w in $workloads; do
    for mode in cold warm; do
      row="| $tree | $w | $mode |"
      for sys in $systems; do row+=" $(cell "$tree" "$sys" "$w" "$mode") |"; done
      row+=" $(ratio "${result[$tree,rafs,$w,$mode]:-0}" "${result[$tree,erofs,$w,$mode]:-0}") |"
      echo "$row"
    done
  done
done
echo
for tree in $trees; do
  echo "- $tree: $(awk -v b="${result[$tree,size]}" 'BEGIN { printf "%.0f", b / 1048576 }') MiB in ${result[$tree,files]} files (incl. 256 MiB large.bin); rafs daemon peak RSS (VmHWM): $(awk -v k="${result[$tree,hwm]:-0}" 'BEGIN { printf "%.1f", k / 1024 }') MiB"
done
echo
echo "Images: mkfs.erofs -zlz4hc, mksquashfs -comp zstd, rafs create defaults. Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)."
echo "Targets (not asserted): warm full read <= 1.5x EROFS; warm meta <= 2x EROFS; cold full read <= 1.5x native; daemon RSS < 64 MiB."
