#!/usr/bin/env bash
# Build benchmarks: rafs create (fixed and CDC chunking) against
# mksquashfs -comp zstd, mkfs.erofs -zlz4hc and tar | zstd, on two trees:
#
# - rootfs: a Debian bookworm minbase rootfs (scripts/debootstrap-rootfs.sh);
# - mixed:  ~1 GiB of real files assembled once from this machine: up to
#           400 MiB of /usr/lib, 250 MiB of /usr/share, 300 MiB of the Rust
#           toolchain (~/.rustup/toolchains) and 100 MiB of crate sources
#           (~/.cargo/registry/src): binaries, shared libraries, text,
#           compressed files and many small sources.
#
# rafs runs with its default options (chunk size, zstd level: see
# docs/chunking.md); mksquashfs and mkfs.erofs with the flags above.
# For each run: wall time, CPU time (user+sys), peak RSS (/usr/bin/time),
# output size, and for rafs the dedup ratio from `inspect --json`. The page
# cache is dropped before every run when /proc/sys/vm/drop_caches is
# writable (the table says whether it was). Prints a markdown table.
#
# usage: scripts/bench-build.sh            (root; release build)
# env:   RAFS_BENCH_CACHE (default /var/tmp/rafs-bench): trees are kept here
#        RAFS_BENCH_TREES (default "rootfs mixed")
#        RAFS_BENCH_ROOTFS (default $RAFS_BENCH_CACHE/rootfs): built if missing
#        RAFS_BIN (a prebuilt rafs: no cargo build)
#        NYDUS_IMAGE (nydus-image, e.g. v2.4.4 built from source): adds its
#          `create` rows (RAFS v6 and v5, default chunking and compression)
# needs: squashfs-tools erofs-utils zstd time debootstrap
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${RAFS_BENCH_CACHE:-/var/tmp/rafs-bench}
trees=${RAFS_BENCH_TREES:-rootfs mixed}
rootfs=${RAFS_BENCH_ROOTFS:-$cache/rootfs}
mkdir -p "$cache"
for t in mksquashfs mkfs.erofs zstd /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install squashfs-tools erofs-utils zstd time)" >&2; exit 1; }
done

if [ -n "${RAFS_BIN:-}" ]; then
  rafs=$RAFS_BIN
else
  cargo build --release --quiet
  rafs=$PWD/target/release/rafs
fi

# Appends up to $2 MiB of regular files and symlinks under $1 to the list.
pick() {
  local src=$1 budget=$(($2 << 20))
  [ -d "$src" ] || return 0
  find "$src" \( -type f -o -type l \) -printf '%s\t%p\n' 2>/dev/null | sort -k2 |
    awk -F'\t' -v b="$budget" '{ s += $1; if (s > b) exit; print $2 }'
}

mixed_tree() {
  local dest=$cache/mixed
  [ -d "$dest" ] && return 0
  echo "assembling $dest (once)" >&2
  {
    pick /usr/lib 400
    pick /usr/share 250
    pick "$HOME/.rustup/toolchains" 300
    pick "$HOME/.cargo/registry/src" 100
  } >"$cache/mixed.list"
  mkdir -p "$dest.partial"
  tar -cf - --verbatim-files-from -T "$cache/mixed.list" 2>/dev/null |
    tar -xf - -C "$dest.partial"
  mv "$dest.partial" "$dest"
}

tree_path() {
  case $1 in
    rootfs) scripts/debootstrap-rootfs.sh "$rootfs" >&2 && echo "$rootfs" ;;
    mixed) mixed_tree && echo "$cache/mixed" ;;
  esac
}

dropped=no
drop_caches() {
  sync
  if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then dropped=yes; fi
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# run NAME OUTPUT CMD...: times CMD, prints one table row.
run() {
  local name=$1 out=$2; shift 2
  rm -rf "$out"
  drop_caches
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >/dev/null 2>"$work/err" || {
    echo "| $tree | $name | failed: $(tail -1 "$work/err") |||||" ; return 0; }
  read -r wall user sys rss <"$work/time"
  local size dedup=-
  size=$(du -sb "$out" | cut -f1)
  if [ -f "$out/bootstrap" ] && [[ $name == rafs* ]]; then
    dedup=$("$rafs" inspect "$out/bootstrap" --json | tr -d ' \n' |
      grep -o '"dedup_ratio":[0-9.eE+-]*' | cut -d: -f2 | awk '{ printf "%.2f", $1 }')
  fi
  printf '| %s | %s | %.1f | %.1f | %s | %s | %.3f | %s |\n' "$tree" "$name" "$wall" \
    "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" "$(mib $((rss * 1024)))" \
    "$(mib "$size")" "$(awk -v o="$size" -v i="$insize" 'BEGIN { print o / i }')" "$dedup"
  rm -rf "$out"
}

work=$(mktemp -d /var/tmp/rafs-bench-run.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "| tree | tool | wall s | CPU s (user+sys) | peak RSS MiB | output MiB | output/input | rafs dedup |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for tree in $trees; do
  src=$(tree_path "$tree")
  insize=$(du -sb --apparent-size "$src" | cut -f1)
  echo "| $tree | *input: $(mib "$insize") MiB, $(find "$src" | wc -l) entries* | | | | | | |"
  run "rafs (defaults: cdc 1M, zstd 10)" "$work/rafs" "$rafs" create "$src" -o "$work/rafs" --no-progress
  run "rafs fixed 1M" "$work/rafs" "$rafs" create "$src" -o "$work/rafs" --no-progress --chunker fixed
  if [ -n "${NYDUS_IMAGE:-}" ]; then
    for v in 6 5; do
      # shellcheck disable=SC2016 # expanded by the inner bash
      run "nydus-image create v$v" "$work/nydus" bash -c 'mkdir -p "$3/blobs" &&
        "$1" create -t dir-rafs --fs-version "$2" -B "$3/bootstrap" -D "$3/blobs" "$4"' \
        _ "$NYDUS_IMAGE" "$v" "$work/nydus" "$src"
    done
  fi
  run "mksquashfs zstd" "$work/img.sqfs" mksquashfs "$src" "$work/img.sqfs" -comp zstd -no-progress -quiet
  run "mkfs.erofs lz4hc" "$work/img.erofs" mkfs.erofs -zlz4hc "$work/img.erofs" "$src"
  # shellcheck disable=SC2016 # expanded by the inner bash
  run "tar \\| zstd -3 -T0" "$work/img.tar.zst" bash -c 'tar -C "$1" -cf - . | zstd -q -3 -T0 -o "$2"' _ "$src" "$work/img.tar.zst"
done
echo
echo "Page cache dropped before each run: $dropped. Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB."
echo "rafs, mksquashfs and zstd -T0 use every core; mkfs.erofs $(mkfs.erofs --help 2>&1 | grep -q -- --workers && echo 'uses its default workers' || echo 'is single-threaded')."
