#!/usr/bin/env bash
# Build (once) a minimal Debian rootfs for tests and benchmarks.
#
# usage: scripts/debootstrap-rootfs.sh DEST
#
# DEST is created atomically: the rootfs is built in DEST.partial and renamed
# when debootstrap succeeds, so a DEST that exists is complete. A lock file
# (DEST.lock) serialises concurrent callers (parallel test processes).
# RAFS_DEBIAN_MIRROR and RAFS_DEBIAN_SUITE override the defaults;
# RAFS_DEBIAN_INCLUDE (comma-separated packages, e.g. python3,gcc,g++,git,perl)
# adds packages to the minbase set.
set -euo pipefail
dest=${1:?usage: $0 DEST}
mirror=${RAFS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${RAFS_DEBIAN_SUITE:-bookworm}
include=${RAFS_DEBIAN_INCLUDE:-}

command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
if [ -d "$dest" ]; then
  exit 0
fi
rm -rf "$dest.partial"
debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$dest.partial" "$mirror" >"$dest.log" 2>&1 || {
  echo "debootstrap failed; see $dest.log" >&2
  tail -20 "$dest.log" >&2
  exit 1
}
# Nothing inside may depend on the build host: drop the apt cache and logs
# that record timestamps of this run.
rm -rf "$dest.partial/var/cache/apt/archives/"*.deb
mv "$dest.partial" "$dest"
