#!/usr/bin/env bash
# The rafs demo: build an image from a small tree, inspect it, verify every
# chunk, unpack it, and compare the result with the source using tools
# that know nothing about rafs (diff, find, getfattr, stat).
#
# usage: scripts/demo.sh            (run as root: it sets owners and xattrs)
# Needs: cargo, attr (getfattr/setfattr), diffutils, findutils, coreutils.
# Prints PASS or FAIL; exits non-zero on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building rafs (release)"
cargo build --release --quiet
rafs=$PWD/target/release/rafs

work=$(mktemp -d /tmp/rafs-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
src=$work/src out=$work/image dest=$work/unpacked

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
"$rafs" inspect "$out/bootstrap" --json

say "rafs check --blobs"
"$rafs" check "$out/bootstrap" --blobs "$out/blobs"

say "rafs unpack"
"$rafs" unpack "$out/bootstrap" --blobs "$out/blobs" "$dest"

say "comparing source and unpacked tree (without rafs)"
fail=0
listing() {
  (cd "$1" && find . -printf '%P %y %m %U %G %s %n %T@ %l\n' | sed 's/^ /. /' |
    awk '$2 == "d" { $6 = "-" } { print }' | sort)
}
xattrs() { (cd "$1" && getfattr -R -h -d -m - --absolute-names . 2>/dev/null); }
# diff -r cannot compare fifos (it reports them as differing); the listing does.
diff -r --no-dereference -x fifo "$src" "$dest" || fail=1
diff <(listing "$src") <(listing "$dest") || fail=1
diff <(xattrs "$src") <(xattrs "$dest") || fail=1
blocks=$(stat -c %b "$dest/data/sparse.img")
if [ "$blocks" -gt 1024 ]; then
  echo "data/sparse.img: $blocks blocks allocated, holes were not kept" && fail=1
fi

if [ "$fail" = 0 ]; then
  printf '\n\033[32mPASS\033[0m: the unpacked tree matches the source (content, type, mode, owner, size, links, mtime, symlinks, xattrs, holes)\n'
else
  printf '\n\033[31mFAIL\033[0m: differences listed above\n'
  exit 1
fi
