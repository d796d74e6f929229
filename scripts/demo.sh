#!/usr/bin/env bash
# The rafs demo: build an image from a small tree, inspect and verify it,
# mount it with `rafs mount` (FUSE) and read it with ordinary tools (ls,
# cat, stat, getfattr), then compare the mounted tree, and an unpacked copy,
# with the source using tools that know nothing about rafs (diff, find,
# getfattr, stat), and unmount.
#
# usage: scripts/demo.sh            (run as root: it sets owners and xattrs)
# Needs: cargo, fuse3 (/dev/fuse, fusermount3), attr (getfattr/setfattr),
# diffutils, findutils, coreutils; curl to show the API socket (optional).
# Prints PASS or FAIL; exits non-zero on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building rafs (release)"
cargo build --release --quiet
rafs=$PWD/target/release/rafs

work=$(mktemp -d /tmp/rafs-demo.XXXXXX)
src=$work/src out=$work/image dest=$work/unpacked mnt=$work/mnt
daemon=
cleanup() {
  if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
    kill -TERM "$daemon" && wait "$daemon" || true
  fi
  mountpoint -q "$mnt" 2>/dev/null && fusermount3 -u "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT
[ -e /dev/fuse ] && command -v fusermount3 >/dev/null ||
  { echo "the demo mounts the image: needs /dev/fuse and fusermount3 (apt-get install fuse3)" >&2; exit 1; }

say "generating a demo tree in $src"
mkdir -p "$src/etc" "$src/usr/bin" "$src/var/lib/empty" "$src/data"
printf 'hello from rafs\n' >"$src/etc/motd"
for i in $(seq 1 2000); do echo "line $i of a compressible config file"; done >"$src/etc/big.conf"
head -c 3M /dev/urandom >"$src/usr/bin/tool"
chmod 4755 "$src/usr/bin/tool"
cp "$src/usr/bin/tool" "$src/data/tool-copy"            # duplicate content
ln "$src/etc/motd" "$src/data/motd-hardlink"             # hardlink
ln -s ../etc/motd "$src/data/motd-link"                  # symlink
ln -s /nonexistent "$src/data/dangling"
setfattr -n user.demo -v "an xattr value" "$src/etc/motd"
truncate -s 64M "$src/data/sparse.img"                   # sparse file
printf 'data in the middle' | dd of="$src/data/sparse.img" bs=1 seek=$((32 << 20)) conv=notrunc status=none
mkfifo "$src/data/fifo"
chown 1234:5678 "$src/data/tool-copy"
chmod 1777 "$src/var/lib/empty"
touch -h -d '2001-02-03 04:05:06.123456789' "$src"/data/* "$src/etc/motd"
find "$src" -type d | sort -r | xargs touch -d '2020-01-01 00:00:00.5'

say "rafs create"
"$rafs" create "$src" -o "$out" --no-progress
ls -l "$out" "$out/blobs"

say "rafs inspect"
"$rafs" inspect "$out/bootstrap"
"$rafs" inspect "$out/bootstrap" --file /etc/motd

say "rafs check --blobs"
"$rafs" check "$out/bootstrap" --blobs "$out/blobs"

say "rafs mount (in the background)"
mkdir -p "$mnt"
"$rafs" mount "$out/bootstrap" "$mnt" --blobs "$out/blobs" --api-socket "$work/api.sock" \
  --cache-dir "$work/cache" >"$work/mount.out" 2>"$work/mount.log" &
daemon=$!
for _ in $(seq 200); do
  grep -q '^rafs: mounted' "$work/mount.out" && break
  kill -0 "$daemon" 2>/dev/null || { cat "$work/mount.log"; echo "rafs mount failed" >&2; exit 1; }
  sleep 0.05
done
cat "$work/mount.out"
grep "$mnt" /proc/self/mountinfo

say "reading the mounted image"
ls -l "$mnt" "$mnt/data" "$mnt/etc"
cat "$mnt/etc/motd"
stat "$mnt/data/motd-hardlink" "$mnt/data/sparse.img" "$mnt/usr/bin/tool"
getfattr -d "$mnt/etc/motd"
readlink "$mnt/data/motd-link"
if command -v curl >/dev/null; then
  curl -s --unix-socket "$work/api.sock" http://localhost/status && echo
fi

say "rafs unpack"
"$rafs" unpack "$out/bootstrap" --blobs "$out/blobs" "$dest"

fail=0
listing() {
  (cd "$1" && find . -printf '%P %y %m %U %G %s %n %T@ %l\n' | sed 's/^ /. /' |
    awk '$2 == "d" { $6 = "-" } { print }' | sort)
}
# Sorted paths: readdir order differs between filesystems.
xattrs() {
  (cd "$1" && find . -print0 | sort -z | xargs -0 getfattr -h -d -m - --absolute-names 2>/dev/null)
}
# compare DIR LABEL: the whole tree against the source, without rafs.
compare() {
  say "comparing source and $2 (without rafs)"
  # diff -r cannot compare fifos (it reports them as differing); the listing does.
  diff -r --no-dereference -x fifo "$src" "$1" || fail=1
  diff <(listing "$src") <(listing "$1") || fail=1
  diff <(xattrs "$src") <(xattrs "$1") || fail=1
  cmp "$src/data/sparse.img" "$1/data/sparse.img" || fail=1
  local blocks
  blocks=$(stat -c %b "$1/data/sparse.img")
  if [ "$blocks" -gt 1024 ]; then
    echo "$2: data/sparse.img has $blocks blocks, holes were not kept" && fail=1
  fi
}
compare "$mnt" "the mounted image"
compare "$dest" "the unpacked tree"

say "rafs stats (the daemon's metrics, for a person)"
"$rafs" stats "$work/api.sock" || fail=1

say "unmounting (SIGTERM)"
kill -TERM "$daemon"
status=0 && wait "$daemon" || status=$?
daemon=
echo "rafs mount exited with status $status"
[ "$status" = 0 ] || fail=1

say "the disk cache the mount filled: list it and re-verify every ready range"
"$rafs" cache ls "$work/cache" --bootstrap "$out/bootstrap" || fail=1
"$rafs" cache verify "$work/cache" --bootstrap "$out/bootstrap" || fail=1
if grep -q " $mnt " /proc/self/mountinfo; then echo "still mounted" && fail=1; fi

if [ "$fail" = 0 ]; then
  printf '\n\033[32mPASS\033[0m: the mounted image and the unpacked tree match the source (content, type, mode, owner, size, links, mtime, symlinks, xattrs, holes)\n'
else
  printf '\n\033[31mFAIL\033[0m: differences listed above\n'
  exit 1
fi
