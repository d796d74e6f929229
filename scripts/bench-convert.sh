#!/usr/bin/env bash
# Image conversion and container start benchmark: a Debian rootfs as a
# two-layer OCI image in a local registry, converted with `rafs convert` and
# run from `rafs mount docker://REF`, against copying the image with skopeo
# and running it the classic way.
#
# Setup (the source image is cached under the bench dir):
#   - cargo build --release (or RAFS_BIN);
#   - the rootfs: a copy of RAFS_BENCH_TREE (read-only, never written), else
#     scripts/debootstrap-rootfs.sh (network needed);
#   - the source image (umoci, OCI layout): layer 1 is the rootfs without
#     /usr/share, layer 2 is /usr/share; the config runs
#     `/bin/sh -c "$CMD"`; rebuilt when the tree or CMD changes;
#   - a local `docker-registry serve` (SRC registry, fresh storage) on a free
#     loopback port; the image is pushed there with `skopeo copy`, and
#     converted there once, untimed, for the mount rows;
#   - scripts/shaping-proxy.py in front of it: RAFS_BENCH_DELAY_MS (10)
#     each way, RAFS_BENCH_RATE_MBIT (200) per direction.
#
# Rows, each RAFS_BENCH_REPS (3) times, page cache dropped before every
# timed step, times and bytes = medians:
#   convert     `rafs convert docker://SRC docker://DST --plain-http --json`
#               against `skopeo copy docker://SRC docker://DST2`; each rep
#               pushes into a fresh destination registry (so that neither
#               tool finds a blob there already, and skopeo's blob info
#               cache has nothing to mount from) reached through an
#               unshaped counting proxy: bytes pushed = bytes sent to it
#               (HTTP included); rafs's own `push.bytes_uploaded` is shown
#               too. Source and destination are local (no shaping).
#   re-convert  the same two commands again into the same destinations:
#               converting again must upload no blob and give the same
#               digest (checked).
#   cold start  from starting `rafs mount docker://PROXY/REPO MNT
#               --plain-http --cache-dir FRESH` (up to its ready line), then
#               `rafs bundle REF DIR`, an overlay (upper and work on a tmpfs)
#               over the mount as DIR/rootfs and `runc run` to the end of the
#               image's command; against `skopeo copy docker://PROXY/SRC
#               oci:DIR` + `umoci unpack` + `runc run` of the same command.
#               Both through the shaping proxy; bytes = the proxy's
#               downstream bytes during the run (HTTP included), plus the
#               daemon's `rafs_backend_bytes_total`. Both runs must print
#               what the command prints in a chroot of the rootfs (checked).
#               Unmounts and removals are not timed.
#
# CMD (RAFS_BENCH_CMD) defaults to `dpkg-query -W coreutils; perl -e
# "print 1"`: dpkg and perl-base are Essential, a minbase rootfs has both.
#
# usage: scripts/bench-convert.sh    (as root: runc, FUSE, overlay,
#                                     drop_caches; needs docker-registry
#                                     skopeo umoci runc fuse3 python3 curl)
# env:   RAFS_BENCH_DIR (/var/tmp/rafs-bench): every file this script writes
#        RAFS_BENCH_TREE (a rootfs to copy instead of debootstrapping one)
#        RAFS_BENCH_REPS (3), RAFS_BENCH_DELAY_MS (10), RAFS_BENCH_RATE_MBIT (200)
#        RAFS_BENCH_CMD, RAFS_BENCH_CONVERT_ARGS (extra `rafs convert` flags),
#        RAFS_BENCH_MOUNT_ARGS (extra `rafs mount` flags), RAFS_BIN (a
#        prebuilt binary: no cargo build)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bench=${RAFS_BENCH_DIR:-/var/tmp/rafs-bench}
work=$bench/convert
reps=${RAFS_BENCH_REPS:-3}
delay_ms=${RAFS_BENCH_DELAY_MS:-10}
rate_mbit=${RAFS_BENCH_RATE_MBIT:-200}
cmd=${RAFS_BENCH_CMD:-dpkg-query -W coreutils; perl -e \"print 1\"}
rafs=${RAFS_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/rafs}
src_repo=bench/debian
rafs_repo=bench/debian-rafs
env_path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "bench-convert: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"

# ---- cleanup: every container, mount, process and temp dir of this run.
pids=()
mounts=()     # FUSE mounts
kmounts=()    # kernel mounts (overlay, tmpfs), unmounted in reverse order
containers=()
tmp=
cleanup() {
  local m p i
  for p in "${containers[@]}"; do runc delete --force "$p" >/dev/null 2>&1 || true; done
  for ((i = ${#kmounts[@]} - 1; i >= 0; i--)); do
    m=${kmounts[i]}
    mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
  done
  for m in "${mounts[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    fi
  done
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  # --one-file-system: never reach into a mount that failed to go away.
  [ -n "$tmp" ] && rm -rf --one-file-system "$tmp"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops process $1 (TERM, then KILL after 10 s).
stop_pid() {
  local p=$1
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

secs() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e9:.2f}')" "$1"; }
ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}' if b else '-')" "$1" "$2"; }
json_get() { python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v[k]
print(v)' "$1" "$2"; }

# ---- prerequisites
[ "$(id -u)" = 0 ] || die "run as root (runc, FUSE, overlay, drop_caches)"
for tool in docker-registry skopeo umoci runc fusermount3 python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install docker-registry skopeo umoci runc fuse3 python3 curl)"
done
mkdir -p "$work"
tmp=$(mktemp -d "$work/run.XXXXXX")

if [ -z "${RAFS_BIN:-}" ]; then
  log "cargo build --release"
  (cd "$repo" && cargo build --release --quiet)
fi
[ -x "$rafs" ] || die "no binary at $rafs"
"$rafs" convert --help >/dev/null 2>&1 || die "$rafs has no convert command"

# ---- rootfs and the source image (cached)
rootfs=$work/rootfs
if [ -n "${RAFS_BENCH_TREE:-}" ]; then
  [ -d "$RAFS_BENCH_TREE" ] || die "RAFS_BENCH_TREE=$RAFS_BENCH_TREE is not a directory"
  tree_id="tree $(realpath "$RAFS_BENCH_TREE") $(find "$RAFS_BENCH_TREE" -xdev -printf '%P %s %T@\n' | sha256sum | cut -c1-16)"
  if [ "$(cat "$rootfs.stamp" 2>/dev/null)" != "$tree_id" ]; then
    log "copying $RAFS_BENCH_TREE"
    rm -rf "$rootfs" "$rootfs.partial" "$rootfs.stamp"
    cp -a "$RAFS_BENCH_TREE" "$rootfs.partial"
    mv "$rootfs.partial" "$rootfs"
    echo "$tree_id" >"$rootfs.stamp"
  fi
else
  "$repo/scripts/debootstrap-rootfs.sh" "$bench/rootfs"
  rootfs=$bench/rootfs
  tree_id="debootstrap $(stat -c %Y "$rootfs")"
fi
for f in /bin/sh /usr/bin/dpkg-query /usr/bin/perl; do
  [ -e "$rootfs$f" ] || log "warning: $f is missing from the rootfs"
done

layout=$work/oci
stamp=$(printf '%s\n%s\n' "$tree_id" "$cmd" | sha256sum | cut -c1-64)
if [ "$(cat "$layout.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "building the two-layer source image with umoci"
  rm -rf "$layout" "$layout.partial" "$layout.stamp"
  umoci init --layout "$layout.partial"
  umoci new --image "$layout.partial:v1"
  tar -C "$rootfs" --numeric-owner --xattrs --exclude=./usr/share -cf "$tmp/layer1.tar" .
  tar -C "$rootfs" --numeric-owner --xattrs -cf "$tmp/layer2.tar" ./usr/share
  umoci raw add-layer --image "$layout.partial:v1" "$tmp/layer1.tar"
  umoci raw add-layer --image "$layout.partial:v1" "$tmp/layer2.tar"
  rm -f "$tmp/layer1.tar" "$tmp/layer2.tar"
  umoci config --image "$layout.partial:v1" --config.entrypoint /bin/sh --config.entrypoint -c \
    --config.cmd "$cmd" --config.env "$env_path" --config.workingdir / --config.user 0:0
  umoci gc --layout "$layout.partial"
  mv "$layout.partial" "$layout"
  echo "$stamp" >"$layout.stamp"
fi

# What the command prints (the reference both runs must print).
expected=$tmp/expected.out
env -i "$env_path" chroot "$rootfs" /bin/sh -c "$cmd" >"$expected" || die "the command fails in a chroot of $rootfs"

# ---- registries and proxies
# start_registry DIR: a fresh docker-registry storing under DIR; sets
# reg_pid and reg_addr (host:port).
start_registry() {
  local dir=$1 port i
  port=$(free_port)
  rm -rf "$dir"
  mkdir -p "$dir/data"
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  reg_pid=$!
  pids+=("$reg_pid")
  reg_addr=127.0.0.1:$port
  for i in $(seq 100); do
    curl -sf -o /dev/null "http://$reg_addr/v2/" && return 0
    kill -0 "$reg_pid" 2>/dev/null || { tail "$dir/log" >&2; die "docker-registry exited"; }
    [ "$i" -lt 100 ] || die "docker-registry did not answer on $reg_addr within 10 s"
    sleep 0.1
  done
}

# start_proxy NAME UPSTREAM DELAY_MS RATE_MBIT: sets proxy_pid, proxy_addr
# and proxy_stats.
start_proxy() {
  local name=$1
  proxy_stats=$tmp/$name.stats.json
  python3 "$repo/scripts/shaping-proxy.py" --listen 127.0.0.1:0 --upstream "$2" \
    --delay-ms "$3" --rate-mbit "$4" --stats "$proxy_stats" \
    >"$tmp/$name.out" 2>"$tmp/$name.err" &
  proxy_pid=$!
  pids+=("$proxy_pid")
  wait_for_line "$tmp/$name.out" 10 '^listening on ' "$proxy_pid" || die "proxy $name did not start: $(cat "$tmp/$name.err")"
  proxy_addr=$(sed -n 's/^listening on //p' "$tmp/$name.out")
}

# proxy_count PID STATS KEY: that proxy's byte counter KEY (bytes_up or
# bytes_down) so far.
proxy_count() {
  local pid=$1 stats=$2
  rm -f "$stats"
  kill -USR1 "$pid"
  for _ in $(seq 200); do
    [ -s "$stats" ] && break
    sleep 0.05
  done
  [ -s "$stats" ] || die "proxy $pid wrote no stats"
  json_get "$stats" "$3"
}

# Sum of the layer sizes of manifest REF (http://host/v2/REPO/manifests/TAG).
layer_bytes() {
  curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$1" |
    python3 -c 'import json, sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))'
}

start_registry "$tmp/src-registry"
src_reg=$reg_addr
log "pushing the source image to $src_reg/$src_repo:v1"
skopeo copy -q --dest-tls-verify=false "oci:$layout:v1" "docker://$src_reg/$src_repo:v1" >&2
src_bytes=$(layer_bytes "http://$src_reg/v2/$src_repo/manifests/v1")
src_layers=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://$src_reg/v2/$src_repo/manifests/v1" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["layers"]))')
[ "$src_layers" = 2 ] || die "the source image has $src_layers layers, not 2"

# ---- rows 1 and 2: convert and re-convert against skopeo copy
declare -A times bytes own digests
convert_args=()
# shellcheck disable=SC2206 # RAFS_BENCH_CONVERT_ARGS is a list of flags
convert_args=(${RAFS_BENCH_CONVERT_ARGS:-})

# timed ROW NAME CMD...: runs CMD (stdout to $tmp/NAME.out) with the page
# cache dropped first, and appends its time to times[ROW].
timed() {
  local row=$1 name=$2 t0 t1
  shift 2
  drop_caches
  t0=$(now_ns)
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || die "$name failed: $(tail -5 "$tmp/$name.err")"
  t1=$(now_ns)
  times[$row]+=" $((t1 - t0))"
}

# push_rep REP: one fresh destination registry behind a counting proxy;
# convert, re-convert, copy, re-copy into it.
push_rep() {
  local rep=$1 dst b0 b1 row name
  start_registry "$tmp/dst-registry.$rep"
  local dst_pid=$reg_pid
  start_proxy "count.$rep" "$reg_addr" 0 0
  dst=$proxy_addr
  for row in convert reconvert; do
    name=$row.rafs.$rep
    b0=$(proxy_count "$proxy_pid" "$proxy_stats" bytes_up)
    timed "$row.rafs" "$name" "$rafs" convert "docker://$src_reg/$src_repo:v1" \
      "docker://$dst/$rafs_repo:v1" --plain-http --json --no-progress "${convert_args[@]}"
    b1=$(proxy_count "$proxy_pid" "$proxy_stats" bytes_up)
    bytes[$row.rafs]+=" $((b1 - b0))"
    own[$row]+=" $(json_get "$tmp/$name.out" push.bytes_uploaded)"
    digests[$row]+=" $(json_get "$tmp/$name.out" digest)"
  done
  for row in convert reconvert; do
    name=$row.skopeo.$rep
    b0=$(proxy_count "$proxy_pid" "$proxy_stats" bytes_up)
    timed "$row.skopeo" "$name" skopeo copy -q --src-tls-verify=false --dest-tls-verify=false \
      "docker://$src_reg/$src_repo:v1" "docker://$dst/$src_repo:v1"
    b1=$(proxy_count "$proxy_pid" "$proxy_stats" bytes_up)
    bytes[$row.skopeo]+=" $((b1 - b0))"
  done
  stop_pid "$proxy_pid"
  stop_pid "$dst_pid"
  rm -rf "$tmp/dst-registry.$rep"
}

for ((r = 1; r <= reps; r++)); do
  log "convert / re-convert / skopeo copy, run $r/$reps"
  push_rep "$r"
done
# shellcheck disable=SC2086 # the accumulated lists split on spaces
[ "$(printf '%s\n' ${digests[convert]} ${digests[reconvert]} | sort -u | wc -l)" = 1 ] ||
  die "converting the same image gave different digests: ${digests[convert]} /${digests[reconvert]}"
for b in ${own[reconvert]}; do
  [ "$b" = 0 ] || die "a re-convert uploaded $b bytes"
done
rafs_digest=$(printf '%s\n' ${digests[convert]} | head -1)

# ---- row 3: cold start over the shaping proxy
log "converting into $src_reg/$rafs_repo:v1 for the mount runs (untimed)"
"$rafs" convert "docker://$src_reg/$src_repo:v1" "docker://$src_reg/$rafs_repo:v1" --plain-http \
  --json --no-progress "${convert_args[@]}" >"$tmp/setup-convert.json" 2>"$tmp/setup-convert.err" ||
  die "rafs convert failed: $(tail -5 "$tmp/setup-convert.err")"
[ "$(json_get "$tmp/setup-convert.json" digest)" = "$rafs_digest" ] ||
  die "the convert into another registry gave another digest"
# The rafs image's layers: data blobs and the bootstrap.
rafs_bytes=$(layer_bytes "http://$src_reg/v2/$rafs_repo/manifests/v1")

start_proxy shaping "$src_reg" "$delay_ms" "$rate_mbit"
shaper_pid=$proxy_pid
shaper_stats=$proxy_stats
purl=$proxy_addr
log "shaping proxy $purl (${delay_ms} ms each way, ${rate_mbit} Mbit/s) in front of $src_reg"

# check_output NAME: the container printed what the chroot printed.
check_output() {
  cmp -s "$expected" "$tmp/$1.out" ||
    die "$1 printed $(head -c 300 "$tmp/$1.out" | tr '\n' '|'), expected $(tr '\n' '|' <"$expected")"
}

run_container() { # NAME BUNDLE: runc run, stdout to $tmp/NAME.out
  local id=rafs-bench-$$-$1
  containers+=("$id")
  runc run --bundle "$2" "$id" </dev/null >"$tmp/$1.out" 2>"$tmp/$1.err" ||
    die "runc run ($1) failed: $(tail -5 "$tmp/$1.err")"
}

declare -A metric
run_rafs() { # REP
  local rep=$1 d=$tmp/cold.$1 ref pid b0 t0 t1 m opts
  ref=docker://$purl/$rafs_repo:v1
  mkdir -p "$d/mnt" "$d/cache" "$d/rw"
  drop_caches
  b0=$(proxy_count "$shaper_pid" "$shaper_stats" bytes_down)
  t0=$(now_ns)
  # shellcheck disable=SC2086 # RAFS_BENCH_MOUNT_ARGS is a list of flags
  "$rafs" mount "$ref" "$d/mnt" --plain-http --cache-dir "$d/cache" --api-socket "$d/api.sock" \
    ${RAFS_BENCH_MOUNT_ARGS:-} </dev/null >"$d/mount.out" 2>"$d/mount.err" &
  pid=$!
  pids+=("$pid")
  mounts+=("$d/mnt")
  wait_for_line "$d/mount.out" 120 '^rafs: mounted' "$pid" || die "rafs mount did not become ready: $(tail -5 "$d/mount.err")"
  times[cold.ready]+=" $(($(now_ns) - t0))"
  "$rafs" bundle "$ref" "$d/bundle" --plain-http >/dev/null 2>"$d/bundle.err" ||
    die "rafs bundle failed: $(tail -5 "$d/bundle.err")"
  times[cold.bundle]+=" $(($(now_ns) - t0))"
  mount -t tmpfs tmpfs "$d/rw"
  kmounts+=("$d/rw")
  mkdir "$d/rw/upper" "$d/rw/work"
  opts=lowerdir=$d/mnt,upperdir=$d/rw/upper,workdir=$d/rw/work
  mount -t overlay overlay -o "$opts" "$d/bundle/rootfs"
  kmounts+=("$d/bundle/rootfs")
  run_container "rafs.$rep" "$d/bundle"
  t1=$(now_ns)
  times[cold.rafs]+=" $((t1 - t0))"
  bytes[cold.rafs]+=" $(($(proxy_count "$shaper_pid" "$shaper_stats" bytes_down) - b0))"
  m=$(curl -sf --max-time 10 --unix-socket "$d/api.sock" http://x/metrics |
    awk '$1 == "rafs_backend_bytes_total" { s += $2 } END { if (NR) printf "%d", s }' || true)
  metric[cold]+=" ${m:--}"
  check_output "rafs.$rep"
  runc delete --force "rafs-bench-$$-rafs.$rep" >/dev/null 2>&1 || true
  umount "$d/bundle/rootfs"
  umount "$d/rw"
  fusermount3 -u "$d/mnt" || kill -TERM "$pid"
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; log "rafs daemon needed SIGKILL"; }
  wait "$pid" 2>/dev/null || true
  rm -rf --one-file-system "$d"
}

run_baseline() { # REP
  local rep=$1 d=$tmp/base.$1 b0 t0 t1
  mkdir -p "$d"
  drop_caches
  b0=$(proxy_count "$shaper_pid" "$shaper_stats" bytes_down)
  t0=$(now_ns)
  skopeo copy -q --src-tls-verify=false "docker://$purl/$src_repo:v1" "oci:$d/oci:v1" >&2 ||
    die "skopeo copy to an OCI layout failed"
  umoci unpack --image "$d/oci:v1" "$d/bundle" >/dev/null 2>"$d/unpack.err" ||
    die "umoci unpack failed: $(tail -5 "$d/unpack.err")"
  # umoci's spec asks for a terminal; the benchmark has none.
  sed -i 's/"terminal": true/"terminal": false/' "$d/bundle/config.json"
  run_container "base.$rep" "$d/bundle"
  t1=$(now_ns)
  times[cold.base]+=" $((t1 - t0))"
  bytes[cold.base]+=" $(($(proxy_count "$shaper_pid" "$shaper_stats" bytes_down) - b0))"
  check_output "base.$rep"
  runc delete --force "rafs-bench-$$-base.$rep" >/dev/null 2>&1 || true
  rm -rf --one-file-system "$d"
}

for ((r = 1; r <= reps; r++)); do
  log "cold start: skopeo copy + umoci unpack + runc, run $r/$reps"
  run_baseline "$r"
  log "cold start: rafs mount + bundle + runc, run $r/$reps"
  run_rafs "$r"
done

# ---- report
# shellcheck disable=SC2086 # the accumulated lists split on spaces
med() { median ${times[$1]}; }
# shellcheck disable=SC2086
medb() { median ${bytes[$1]}; }
row() { # LABEL RAFS_KEY BASE_KEY NOTE (after the rafs bytes)
  local tr tb br bb
  tr=$(med "$2") tb=$(med "$3") br=$(medb "$2") bb=$(medb "$3")
  echo "| $1 | $(secs "$tr") | $(secs "$tb") | $(ratio "$tr" "$tb") | $(human "$br")$4 | $(human "$bb") | $(ratio "$br" "$bb") |"
}
# shellcheck disable=SC2086
own_conv=$(median ${own[convert]})
# shellcheck disable=SC2086
own_reconv=$(median ${own[reconvert]})
# shellcheck disable=SC2086
cold_metric=$(median ${metric[cold]})
[ "$cold_metric" = - ] || cold_metric=$(human "$cold_metric")

echo
echo "## rafs convert and container start ($(date -u +%F), median of $reps)"
echo
echo "source: Debian rootfs ($(du -sh --apparent-size "$rootfs" | cut -f1)), 2 layers (all but /usr/share; /usr/share), $(human "$src_bytes") of gzip layers;" \
  "rafs image $rafs_digest: $(human "$rafs_bytes") of blobs + bootstrap ($(json_get "$tmp/setup-convert.json" blobs) blobs)"
echo "command: /bin/sh -c '$cmd'; cold start over the shaping proxy (${delay_ms} ms each way, ${rate_mbit} Mbit/s), fresh cache, page cache dropped"
echo "bytes: sent to (rows 1-2) or received from (row 3) the registry through the proxy, HTTP included"
echo
echo "| step: rafs vs baseline | rafs (s) | baseline (s) | time ratio | rafs bytes | baseline bytes | bytes ratio |"
echo "|---|---|---|---|---|---|---|"
row "convert vs skopeo copy docker→docker" convert.rafs convert.skopeo " (push report: $(human "$own_conv"))"
row "re-convert vs skopeo copy again" reconvert.rafs reconvert.skopeo " (push report: $(human "$own_reconv"))"
row "mount + bundle + runc vs skopeo copy oci: + umoci unpack + runc" cold.rafs cold.base " (backend: $cold_metric)"
echo
echo "time ratio and bytes ratio: rafs / baseline (below 1: rafs is faster / moves less);" \
  "cold start: the mount's ready line after $(secs "$(med cold.ready)") s, the bundle written after $(secs "$(med cold.bundle)") s"
