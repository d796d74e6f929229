#!/usr/bin/env bash
# Runs every fuzz target briefly (CI: after the tests; also by hand).
#
# usage: fuzz/ci.sh [SECONDS]   (default 60 per target; FUZZ_SECONDS too)
#
# Installs cargo-fuzz if missing, seeds the corpora (fuzz/corpus/TARGET,
# git-ignored) from a small tree built by `rafs create` (the rafs binary of
# target/debug or target/release, or $RAFS_BIN), builds every target once,
# then runs each for SECONDS. libFuzzer's output goes to
# fuzz/artifacts/TARGET.log; a crash, a leak, an out-of-memory or an input
# slower than -timeout fails the script, with the log's tail and the
# reproducer (fuzz/artifacts/TARGET/) named.
set -euo pipefail
rafs=${RAFS_BIN:+$(realpath "$RAFS_BIN")}
cd "$(dirname "$0")"
secs=${1:-${FUZZ_SECONDS:-60}}

if [ -z "$rafs" ]; then
  for b in ../target/debug/rafs ../target/release/rafs; do
    if [ -x "$b" ]; then rafs=$(realpath "$b"); break; fi
  done
fi
[ -n "$rafs" ] || { echo "fuzz/ci.sh: no rafs binary (cargo build first, or set RAFS_BIN)" >&2; exit 1; }

if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi

# A small tree with every kind of node, a hole and an xattr.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree=$work/tree
mkdir -p "$tree/dir/sub" "$tree/empty"
printf 'hello\n' >"$tree/dir/hello"
seq 1 4000 >"$tree/dir/sub/numbers"                 # compressible, 2 chunks
LC_ALL=C awk 'BEGIN { srand(7); for (i = 0; i < 9000; i++) printf "%c", int(rand() * 256) }' \
  >"$tree/noise"                                     # incompressible
printf 'end' | dd of="$tree/sparse" bs=1 seek=200000 conv=notrunc status=none
ln -s dir/hello "$tree/link"
ln "$tree/dir/hello" "$tree/hardlink"
mkfifo "$tree/fifo"
setfattr -n user.seed -v 1 "$tree/dir/hello" 2>/dev/null || true
"$rafs" create "$tree" -o "$work/out" --no-progress --chunk-size 4K >/dev/null
boot=$work/out/bootstrap
# A cache of the image: its map file seeds the cache header target.
"$rafs" prefetch "$boot" --blobs "$work/out/blobs" --cache-dir "$work/cache" --all \
  --no-progress >/dev/null

mkdir -p corpus/bootstrap corpus/fetch_read corpus/cache_header corpus/blobmgr_message corpus/elf_needed artifacts
# A real (small) ELF executable of this machine names its libraries.
cp /bin/true corpus/elf_needed/seed-true
# Blob-manager packets (docs/PROTOCOL.md): a Ping, and a CloseBlob of handle 7.
printf 'RFBM\x01\x00\x0a\x00\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0' \
  >corpus/blobmgr_message/seed-ping
printf 'RFBM\x01\x00\x09\x00\0\0\0\0\x08\0\0\0\x02\0\0\0\0\0\0\0\x07\0\0\0\0\0\0\0' \
  >corpus/blobmgr_message/seed-close
cp "$boot" corpus/bootstrap/seed-create
cp "$boot" corpus/fetch_read/seed-bootstrap
cat "$boot" "$work"/out/blobs/* >corpus/fetch_read/seed-bootstrap-blob
for m in "$work"/cache/*.map; do
  [ -e "$m" ] && cp "$m" corpus/cache_header/seed-map
done

export RUSTC_BOOTSTRAP=1
t0=$SECONDS
cargo fuzz build >artifacts/build.log 2>&1 || { tail -50 artifacts/build.log; exit 1; }
echo "fuzz: targets built in $((SECONDS - t0)) s"

failed=()
for target in $(cargo fuzz list); do
  t0=$SECONDS
  log=artifacts/$target.log
  if cargo fuzz run "$target" -- -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 \
    >"$log" 2>&1; then
    runs=$(grep -o '^Done [0-9]* runs' "$log" | tail -1)
    echo "fuzz: $target: no crash in $((SECONDS - t0)) s (${runs:-?})"
  else
    echo "fuzz: $target FAILED after $((SECONDS - t0)) s; last lines of fuzz/$log:"
    tail -60 "$log"
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failing targets: ${failed[*]} (reproducers in fuzz/artifacts/TARGET/)" >&2
  exit 1
fi
