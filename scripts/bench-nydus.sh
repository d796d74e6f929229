# shellcheck shell=bash
# Nydus helpers of the benchmark scripts (sourced, not run): build a nydus
# image of a directory, mount it with nydusd, stop a FUSE daemon and report
# its peak RSS. Used by bench-read.sh, bench-rss.sh and bench-cold.sh.
#
# env: NYDUSD, NYDUS_IMAGE: the nydusd and nydus-image binaries (v2.4.4 is
#      what the figures were taken with)
#      NYDUS_FS_VERSION (default 6): the RAFS version nydus-image writes.
#        6: nydusd refuses a v6 image without a blobcache ("Rafs v6 must have
#           local blobcache configured"), so the caller gives each mount a
#           fresh, empty blobcache directory: fetched data is also written
#           there (rafs, mounted without --cache-dir, keeps it in memory).
#        5: mounted with "dummycache": no disk cache, memory only, like rafs.
# Images: nydus-image create -t dir-rafs with its defaults (zstd, 1 MiB
# chunks, blake3), blobs in a local directory, served by the localfs backend.

nydus_fs_version() { echo "${NYDUS_FS_VERSION:-6}"; }

# Both binaries set and executable.
nydus_available() {
  [ -n "${NYDUSD:-}" ] && [ -x "$NYDUSD" ] && [ -n "${NYDUS_IMAGE:-}" ] && [ -x "$NYDUS_IMAGE" ]
}

# nydus_create SRC OUT: OUT/bootstrap and OUT/blobs/<id>, built once (OUT/done
# marks a complete image; nydus-image is not the system under change).
nydus_create() {
  local src=$1 out=$2 v
  v=$(nydus_fs_version)
  [ -f "$out/done" ] && return 0
  echo "nydus-image create (fs-version $v) of $src" >&2
  rm -rf "$out" && mkdir -p "$out/blobs"
  "$NYDUS_IMAGE" create -t dir-rafs --fs-version "$v" -l warn \
    -B "$out/bootstrap" -D "$out/blobs" "$src" >"$out/create.log" 2>&1 || {
    echo "nydus-image create failed; see $out/create.log" >&2
    tail -5 "$out/create.log" >&2
    return 1
  }
  touch "$out/done"
}

# nydus_cache_json CACHEDIR: the "cache" object of a nydusd config: dummycache
# for fs-version 5, else a blobcache in CACHEDIR.
nydus_cache_json() {
  if [ "$(nydus_fs_version)" = 5 ]; then
    echo '{"type": "dummycache"}'
  else
    echo "{\"type\": \"blobcache\", \"config\": {\"work_dir\": \"$1\"}}"
  fi
}

# nydus_config BLOBS CACHEDIR: the nydusd JSON config on stdout. CACHEDIR is
# only used for fs-version 6 (blobcache); the caller makes it fresh.
nydus_config() {
  nydus_config_backend "{\"type\": \"localfs\", \"config\": {\"dir\": \"$1\"}}" "$2"
}

# nydus_config_registry SCHEME HOST:PORT REPO CACHEDIR: the same with the
# registry backend (anonymous; for https, skip_verify: a self-signed cert).
nydus_config_registry() {
  local skip=false
  [ "$1" = https ] && skip=true
  nydus_config_backend "{\"type\": \"registry\", \"config\": {\"scheme\": \"$1\", \"host\": \"$2\",
    \"repo\": \"$3\", \"skip_verify\": $skip, \"timeout\": 60, \"connect_timeout\": 10,
    \"retry_limit\": 2}}" "$4"
}

# nydus_config_backend BACKEND_JSON CACHEDIR: the whole config on stdout.
nydus_config_backend() {
  cat <<EOF
{
  "device": {
    "backend": $1,
    "cache": $(nydus_cache_json "$2")
  },
  "mode": "direct",
  "digest_validate": false,
  "iostats_files": false,
  "enable_xattr": true
}
EOF
}

# nydus_mount BOOTSTRAP MNT CONFIG LOG PIDFILE: starts nydusd in the
# background and waits (polling every 10 ms, up to 60 s) until MNT is mounted.
nydus_mount() {
  local bootstrap=$1 mnt=$2 config=$3 log=$4 pidfile=$5 pid i
  "$NYDUSD" --rlimit-nofile 0 --log-level warn --config "$config" \
    --mountpoint "$mnt" --bootstrap "$bootstrap" </dev/null >>"$log" 2>&1 &
  pid=$!
  echo "$pid" >"$pidfile"
  for ((i = 0; i < 6000; i++)); do
    mountpoint -q "$mnt" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  echo "nydusd mount did not become ready:" >&2
  tail -5 "$log" >&2
  return 1
}

# daemon_stop PID MNT: prints the daemon's VmHWM (kB), sends SIGTERM and waits
# (up to 60 s, then SIGKILL and a lazy unmount) until it is gone or a zombie
# and MNT is unmounted.
daemon_stop() {
  local pid=$1 mnt=$2 i
  awk '/VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 3000; i++)); do
    if { [ ! -e "/proc/$pid" ] || grep -q ') Z' "/proc/$pid/stat" 2>/dev/null; } &&
      ! mountpoint -q "$mnt"; then
      return 0
    fi
    sleep 0.02
  done
  echo "daemon $pid did not stop; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  umount -l "$mnt" 2>/dev/null || true
}
