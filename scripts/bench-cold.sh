#!/usr/bin/env bash
# Cold-start benchmark: run a real command in a Debian rootfs served lazily
# by `rafs mount` from an OCI registry behind a shaped link, against the
# classic way (download the rootfs tar.gz through the same link, extract
# it, run the command in the extracted tree).
#
# Setup (cached under the bench dir where possible):
#   - cargo build --release;
#   - a Debian bookworm minbase rootfs (scripts/debootstrap-rootfs.sh);
#   - `rafs create` of it (bootstrap + blobs/<sha256>), rebuilt when the
#     rafs binary changes; rootfs.tar.gz of the same tree (gzip -6);
#   - a local `docker-registry serve` (filesystem storage in the bench
#     dir) on a free loopback port; the blobs and the tar.gz are pushed
#     with curl (OCI upload API: POST .../blobs/uploads/, PUT ?digest=)
#     and each is read back through the proxy and its sha256 checked;
#   - scripts/shaping-proxy.py in front of the registry: RAFS_BENCH_DELAY_MS
#     (10) each way, RAFS_BENCH_RATE_MBIT (200) per direction.
#
# Scenarios, each RAFS_BENCH_REPS (3) times, page cache dropped before
# every run, time = median (prefetch scenarios need a binary with
# --record-access and `rafs prefetch`):
#   listmount  a list recorded once with --record-access (untimed run),
#             prefetched on mount (--prefetch-list) while the command runs;
#   prefetched `rafs prefetch --list` into a fresh cache, then the mount and
#             the command (both timed);
#   all       --prefetch-all on mount.
#   baseline  curl the tar.gz through the proxy piped into `tar -xzf` (download
#             and extraction overlap: the strongest form of the baseline; no
#             digest check), then `sh -c "$CMD"` in bubblewrap with DIR as `/`.
#   cold      from starting `rafs mount BOOTSTRAP MNT --backend
#             registry+http://PROXY/rafs/rootfs --cache-dir FRESH --api-socket
#             SOCK` to the end of `sh -c "$CMD"` in bubblewrap with MNT as `/` (read-only; real /dev, /proc; tmpfs /tmp) (the unmount is not
#             timed).
#   warm      the same with the cache dir of a cold run kept (only the page
#             cache is dropped).
# CMD (RAFS_BENCH_CMD) defaults to `/usr/bin/dpkg -l >/dev/null &&
# /usr/bin/perl -e 1`: dpkg and perl-base are Essential, so a minbase
# rootfs has both.
#
# Bytes fetched: the daemon's `rafs_backend_bytes_total` (GET /metrics on
# the API socket) when it reports one, and always the shaping proxy's
# downstream byte counter (HTTP headers included) around each run. They
# are compared with the image's total blob bytes and with the bytes of the
# files the command reads. That last figure is measured once, outside any
# timing, by running CMD in the extracted baseline tree under
# `strace -f -e trace=openat,execve` and summing the sizes of the distinct
# regular files opened or executed (paths resolved inside the rootfs). It
# is an upper bound on what the command needs (whole files, even if only a
# part is read) and leaves out the ELF interpreter, which the kernel maps
# without an openat.
#
# Targets printed with the figures: cold start at least 10x faster than
# download+extract, and bytes fetched at most 10% of the image.
#
# The rafs scenarios need `rafs mount` to support --cache-dir and the
# registry backend; with a binary that lacks them (or RAFS_BENCH_SKIP_RAFS=1)
# they are skipped with a message and everything else still runs.
#
# usage: scripts/bench-cold.sh          (as root, on Debian; installs missing
#                                         docker-registry python3 curl fuse3
#                                         debootstrap strace)
# env:   RAFS_BENCH_DIR (/var/tmp/rafs-bench): every file this script writes
#        RAFS_BENCH_REPS (3), RAFS_BENCH_DELAY_MS (10), RAFS_BENCH_RATE_MBIT (200)
#        RAFS_BENCH_TREE (a prebuilt rootfs, only read: no debootstrap),
#        RAFS_DEBIAN_INCLUDE (packages added to minbase, e.g. the issue-12
#        image: python3,gcc,g++,git,perl),
#        RAFS_BENCH_CMD, RAFS_BENCH_SKIP_RAFS, RAFS_BENCH_CREATE_ARGS (extra
#        `rafs create` flags), RAFS_BENCH_MOUNT_ARGS (extra `rafs mount`
#        flags), RAFS_BIN (a prebuilt binary: no cargo build)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bench=${RAFS_BENCH_DIR:-/var/tmp/rafs-bench}
work=$bench/cold
reps=${RAFS_BENCH_REPS:-3}
delay_ms=${RAFS_BENCH_DELAY_MS:-10}
rate_mbit=${RAFS_BENCH_RATE_MBIT:-200}
cmd=${RAFS_BENCH_CMD:-/usr/bin/dpkg -l >/dev/null && /usr/bin/perl -e 1}
repo_name=rafs/rootfs
rafs=${RAFS_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/rafs}

log() { echo "bench-cold: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"

# ---- cleanup: every background process and mount this script starts.
pids=()
mounts=()
cleanup() {
  local m p
  for m in "${mounts[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    fi
  done
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

secs() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e9:.3f}')" "$1"; }

# ---- prerequisites
[ "$(id -u)" = 0 ] || die "run as root (bubblewrap, FUSE, drop_caches)"
ensure_packages() {
  local missing=() pair
  for pair in docker-registry:docker-registry python3:python3 curl:curl \
    fusermount3:fuse3 debootstrap:debootstrap strace:strace bwrap:bubblewrap; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -o DPkg::Lock::Timeout=300
    DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=300 "${missing[@]}"
  fi
  command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
}
ensure_packages
mkdir -p "$work"

# Runs CMD with ROOT as `/`, like a container: bubblewrap with ROOT bound
# read-only, a real /dev and /proc and a tmpfs /tmp (the rafs mount is
# read-only; commands such as gcc write to /tmp).
# Any further arguments are a wrapper to run bwrap under (strace).
in_root() { # ROOT CMD [WRAPPER...]
  local root=$1 c=$2
  shift 2
  "$@" bwrap --ro-bind "$root" / --dev /dev --proc /proc --tmpfs /tmp --unshare-pid \
    --die-with-parent -- /bin/sh -c "$c"
}

# ---- build, rootfs, image, tarball
if [ -z "${RAFS_BIN:-}" ]; then
  log "cargo build --release"
  (cd "$repo" && cargo build --release --quiet)
fi
[ -x "$rafs" ] || die "no binary at $rafs"

if [ -n "${RAFS_BENCH_TREE:-}" ]; then
  rootfs=$RAFS_BENCH_TREE
  [ -d "$rootfs" ] || die "RAFS_BENCH_TREE=$rootfs is not a directory"
else
  # One cached rootfs per package set (RAFS_DEBIAN_INCLUDE).
  rootfs=$bench/rootfs${RAFS_DEBIAN_INCLUDE:+-$(printf %s "$RAFS_DEBIAN_INCLUDE" | tr -c 'A-Za-z0-9\n' -)}
  "$repo/scripts/debootstrap-rootfs.sh" "$rootfs"
fi
for f in /usr/bin/dpkg /usr/bin/perl; do
  [ -e "$rootfs$f" ] || log "warning: $f is missing from the rootfs"
done

image=$work/image
stamp=$( (sha256sum "$rafs" | cut -c1-64; echo "${RAFS_BENCH_CREATE_ARGS:-}") | sha256sum | cut -c1-64)
if [ "$(cat "$image/stamp" 2>/dev/null)" != "$stamp" ]; then
  log "rafs create $rootfs"
  rm -rf "$image" "$image.partial"
  # shellcheck disable=SC2086 # RAFS_BENCH_CREATE_ARGS is a list of flags
  "$rafs" create "$rootfs" -o "$image.partial" --no-progress ${RAFS_BENCH_CREATE_ARGS:-} >&2
  echo "$stamp" >"$image.partial/stamp"
  mv "$image.partial" "$image"
fi
bootstrap=$image/bootstrap
{ [ -f "$bootstrap" ] && [ -d "$image/blobs" ]; } || die "rafs create left no bootstrap + blobs in $image"

tarball=$work/rootfs.tar.gz
if [ ! -f "$tarball" ]; then
  log "tar czf $tarball"
  tar -C "$rootfs" --numeric-owner -czf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
fi
tar_hex=$(sha256sum "$tarball" | cut -c1-64)
image_bytes=$(du -cb "$image"/blobs/* | tail -1 | cut -f1)
tar_bytes=$(stat -c %s "$tarball")

# ---- registry
reg_port=$(free_port)
reg_dir=$work/registry
# Fresh storage each run: pushing is local and quick, and blobs of older
# images do not pile up.
rm -rf "$reg_dir"
mkdir -p "$reg_dir/data"
cat >"$reg_dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $reg_dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$reg_port
EOF
docker-registry serve "$reg_dir/config.yml" >"$reg_dir/log" 2>&1 &
pids+=($!)
reg_pid=$!
reg=http://127.0.0.1:$reg_port
for i in $(seq 100); do
  curl -sf -o /dev/null "$reg/v2/" && break
  kill -0 "$reg_pid" 2>/dev/null || { tail "$reg_dir/log" >&2; die "docker-registry exited"; }
  [ "$i" -lt 100 ] || die "docker-registry did not answer on $reg within 10 s"
  sleep 0.1
done

# push_blob FILE HEX: monolithic upload unless the registry has it already.
push_blob() {
  local file=$1 hex=$2 loc
  if curl -sf -o /dev/null -I "$reg/v2/$repo_name/blobs/sha256:$hex"; then
    return 0
  fi
  loc=$(curl -sf --max-time 30 -X POST -D - -o /dev/null "$reg/v2/$repo_name/blobs/uploads/" |
    awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')
  [ -n "$loc" ] || die "no Location from POST $reg/v2/$repo_name/blobs/uploads/"
  case $loc in /*) loc=$reg$loc ;; esac
  case $loc in *\?*) loc="$loc&digest=sha256:$hex" ;; *) loc="$loc?digest=sha256:$hex" ;; esac
  curl -sf --max-time 600 -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
    -T "$file" "$loc" || die "PUT of $file failed"
}
log "pushing $(find "$image/blobs" -type f | wc -l) blobs and the tarball to $reg/$repo_name"
for f in "$image"/blobs/*; do
  hex=$(basename "$f")
  [[ $hex =~ ^[0-9a-f]{64}$ ]] || die "unexpected blob name $f"
  push_blob "$f" "$hex"
done
push_blob "$tarball" "$tar_hex"

# ---- shaping proxy
proxy_stats=$work/proxy-stats.json
python3 "$repo/scripts/shaping-proxy.py" --listen 127.0.0.1:0 --upstream "127.0.0.1:$reg_port" \
  --delay-ms "$delay_ms" --rate-mbit "$rate_mbit" --stats "$proxy_stats" \
  >"$work/proxy.out" 2>"$work/proxy.err" &
pids+=($!)
proxy_pid=$!
wait_for_line "$work/proxy.out" 10 '^listening on ' "$proxy_pid" || die "shaping proxy did not start: $(cat "$work/proxy.err")"
proxy=$(sed -n 's/^listening on //p' "$work/proxy.out")
purl=http://$proxy

# Bytes the proxy has sent downstream so far.
proxy_bytes() {
  rm -f "$proxy_stats"
  kill -USR1 "$proxy_pid"
  for _ in $(seq 100); do
    [ -s "$proxy_stats" ] && break
    sleep 0.05
  done
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["bytes_down"])' "$proxy_stats"
}

# Self-check: one rafs blob and the tarball, through the proxy, intact.
check_hex=$(basename "$(find "$image/blobs" -type f | head -1)")
# The tarball's pull also checks the shaping: it cannot beat size / rate.
for hex in "$check_hex" "$tar_hex"; do
  t0=$(now_ns)
  got=$(curl -sfL --max-time 300 "$purl/v2/$repo_name/blobs/sha256:$hex" | sha256sum | cut -c1-64)
  t1=$(now_ns)
  [ "$got" = "$hex" ] || die "blob $hex read back through the proxy has sha256 $got"
done
min_ns=$(python3 -c "r = $rate_mbit; print(int($tar_bytes * 8 / (r * 1e6) * 1e9) if r else 0)")
log "registry $reg, proxy $purl (${delay_ms} ms each way, ${rate_mbit} Mbit/s): blobs read back intact;" \
  "tarball pulled in $(secs $((t1 - t0))) s (at least $(secs "$min_ns") s at that rate)"
[ $((t1 - t0)) -ge "$min_ns" ] || die "the shaping proxy is faster than its rate limit"

# ---- bytes of the files CMD reads (see the header), once, untimed
ref=$work/ref-root
# Cached per command and tarball.
read_bytes_file=$work/read-bytes.$(printf '%s\n%s' "$cmd" "$tar_hex" | sha256sum | cut -c1-16)
if [ ! -f "$read_bytes_file" ]; then
  rm -rf "$ref" && mkdir -p "$ref"
  tar -xzf "$tarball" -C "$ref"
  in_root "$ref" "$cmd" strace -f -qq -e trace=openat,execve -o "$work/strace.log"
  python3 - "$ref" "$work/strace.log" >"$read_bytes_file.partial" <<'EOF'
import os, re, stat, sys
root, logf = sys.argv[1], sys.argv[2]
def resolve(p, depth=0):
    """p (absolute, inside root) with symlinks followed inside root."""
    parts, cur = [x for x in p.split("/") if x], ""
    for i, part in enumerate(parts):
        nxt = os.path.normpath(cur + "/" + part)
        host = root + nxt
        if depth < 40 and os.path.islink(host):
            t = os.readlink(host)
            base = t if t.startswith("/") else cur + "/" + t
            return resolve(os.path.normpath(base + "/" + "/".join(parts[i + 1:])), depth + 1)
        cur = nxt
    return root + cur
pat = re.compile(r'(?:openat\(AT_FDCWD, |execve\()"([^"]+)".* = (-?\d+)')
seen = set()
for line in open(logf):
    m = pat.search(line)
    if m and int(m.group(2)) >= 0 and m.group(1).startswith("/"):
        seen.add(resolve(m.group(1)))
total = 0
for h in seen:
    try:
        st = os.stat(h)
    except OSError:
        continue
    if stat.S_ISREG(st.st_mode):
        total += st.st_size
print(total)
EOF
  mv "$read_bytes_file.partial" "$read_bytes_file"
  rm -rf "$ref"
fi
read_bytes=$(cat "$read_bytes_file")

# ---- scenarios
declare -A times bytes metric
run_baseline() { # REP
  local dir=$work/base b0 t0 t1
  rm -rf "$dir" && mkdir -p "$dir"
  drop_caches
  b0=$(proxy_bytes)
  t0=$(now_ns)
  curl -sfL --max-time 600 "$purl/v2/$repo_name/blobs/sha256:$tar_hex" | tar -xzf - -C "$dir"
  in_root "$dir" "$cmd"
  t1=$(now_ns)
  times[baseline]+=" $((t1 - t0))"
  bytes[baseline]+=" $(($(proxy_bytes) - b0))"
  rm -rf "$dir"
}

rafs_supported() {
  [ "${RAFS_BENCH_SKIP_RAFS:-0}" = 1 ] && { log "RAFS_BENCH_SKIP_RAFS=1: rafs scenarios skipped"; return 1; }
  local help
  help=$("$rafs" mount --help 2>&1) || true
  grep -q -- '--cache-dir' <<<"$help" || { log "rafs mount has no --cache-dir yet: rafs scenarios skipped"; return 1; }
  grep -q 'registry+http' <<<"$help" || { log "rafs mount has no registry backend yet: rafs scenarios skipped"; return 1; }
}

list=$work/access.list
# Scenarios: cold (fresh cache), warm (the cold run's cache), record (fresh
# cache, --record-access: writes the list the next three use), listmount
# (fresh cache, --prefetch-list on mount), prefetched (`rafs prefetch
# --list` into a fresh cache, timed, then the mount), all (--prefetch-all).
run_rafs() { # SCENARIO REP
  local scen=$1 rep=$2 mnt=$work/mnt cache=$work/cache.$2 sock=$work/api.sock
  local out=$work/rafs.$1.$2.out err=$work/rafs.$1.$2.err b0 t0 t1 pid m i
  local backend="registry+http://$proxy/$repo_name" extra=()
  mkdir -p "$mnt"
  [ "$scen" = warm ] || rm -rf "$cache"
  mkdir -p "$cache"
  rm -f "$sock"
  case $scen in
    record) extra=(--record-access "$list") ;;
    listmount) extra=(--prefetch-list "$list") ;;
    all) extra=(--prefetch-all) ;;
  esac
  drop_caches
  b0=$(proxy_bytes)
  t0=$(now_ns)
  if [ "$scen" = prefetched ]; then
    "$rafs" prefetch "$bootstrap" --backend "$backend" --cache-dir "$cache" --list "$list" \
      --no-progress >"$work/prefetch.$rep.out" 2>&1 || die "rafs prefetch failed: $(tail -5 "$work/prefetch.$rep.out")"
  fi
  # shellcheck disable=SC2086 # RAFS_BENCH_MOUNT_ARGS is a list of flags
  "$rafs" mount "$bootstrap" "$mnt" --backend "$backend" --cache-dir "$cache" --api-socket "$sock" \
    "${extra[@]}" ${RAFS_BENCH_MOUNT_ARGS:-} </dev/null >"$out" 2>"$err" &
  pid=$!
  pids+=("$pid")
  mounts+=("$mnt")
  wait_for_line "$out" 60 '^rafs: mounted' "$pid" || { tail -20 "$err" >&2; die "rafs mount ($scen $rep) did not become ready"; }
  in_root "$mnt" "$cmd" || die "command failed in the rafs mount; daemon log: $(tail -5 "$err")"
  t1=$(now_ns)
  times[$scen]+=" $((t1 - t0))"
  bytes[$scen]+=" $(($(proxy_bytes) - b0))"
  m=$(curl -sf --max-time 10 --unix-socket "$sock" http://x/metrics |
    awk '$1 == "rafs_backend_bytes_total" { s += $2 } END { if (NR) printf "%d", s }' || true)
  metric[$scen]+=" ${m:--}"
  fusermount3 -u "$mnt" || kill -TERM "$pid"
  for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; log "rafs daemon needed SIGKILL"; }
  wait "$pid" 2>/dev/null || true
}

scenarios=(baseline)
for ((r = 1; r <= reps; r++)); do
  log "baseline run $r/$reps"
  run_baseline "$r"
done
prefetch_supported() {
  "$rafs" mount --help 2>&1 | grep -q -- '--record-access' && "$rafs" prefetch --help >/dev/null 2>&1
}
if rafs_supported; then
  scenarios+=(cold warm)
  for ((r = 1; r <= reps; r++)); do
    log "rafs cold run $r/$reps"
    run_rafs cold "$r"
  done
  for ((r = 1; r <= reps; r++)); do
    log "rafs warm run $r/$reps"
    run_rafs warm "$r"
  done
  if prefetch_supported; then
    log "recording the command's accesses"
    run_rafs record 0
    [ -s "$list" ] || die "--record-access wrote no list"
    times[record]=
    bytes[record]=
    metric[record]=
    scenarios+=(listmount prefetched all)
    for s in listmount prefetched all; do
      for ((r = 1; r <= reps; r++)); do
        log "rafs $s run $r/$reps"
        run_rafs "$s" "$r"
      done
    done
  else
    log "no prefetch support in this binary: prefetch scenarios skipped"
  fi
fi

# ---- report
# shellcheck disable=SC2086 # the accumulated lists split on spaces
base_ns=$(median ${times[baseline]})
echo
echo "## rafs cold start ($(date -u +%F), ${delay_ms} ms each way, ${rate_mbit} Mbit/s, median of $reps)"
echo
echo "image: $(human "$image_bytes") of blobs; rootfs.tar.gz: $(human "$tar_bytes"); files read by the command: $(human "$read_bytes")"
echo "command: bwrap (ROOT as /, ro; /dev, /proc, tmpfs /tmp) /bin/sh -c '$cmd'"
echo
echo "| scenario | time (s) | bytes fetched (proxy) | rafs_backend_bytes_total | % of image | x files read | speed-up vs baseline | target |"
echo "|---|---|---|---|---|---|---|---|"
for s in "${scenarios[@]}"; do
  # shellcheck disable=SC2086
  t=$(median ${times[$s]})
  # shellcheck disable=SC2086
  b=$(median ${bytes[$s]})
  mm=-
  if [ -n "${metric[$s]:-}" ]; then
    # shellcheck disable=SC2086
    mm=$(median ${metric[$s]})
  fi
  pct=$(python3 -c "print(f'{100 * $b / $image_bytes:.1f}%')")
  xr=$(python3 -c "print(f'{$b / max($read_bytes, 1):.2f}x')")
  speed=$(python3 -c "print(f'{$base_ns / max($t, 1):.1f}x')")
  case $s in
    baseline) target="-" ;;
    cold) target="≥10x faster; ≤10% of image: $(python3 -c "print('met' if $base_ns >= 10 * $t and $b <= $image_bytes / 10 else 'NOT met')")" ;;
    listmount)
      # shellcheck disable=SC2086
      cold_ns=$(median ${times[cold]})
      target="≥30% faster than cold: $(python3 -c "print(f'{100 * (1 - $t / $cold_ns):.0f}% faster, ' + ('met' if $t <= 0.7 * $cold_ns else 'NOT met'))")" ;;
    prefetched) target="time includes rafs prefetch" ;;
    all) target="-" ;;
    warm) target="-" ;;
  esac
  [ "$mm" = - ] || mm=$(human "$mm")
  echo "| $s | $(secs "$t") | $(human "$b") | $mm | $pct | $xr | $speed | $target |"
done
if [ ${#scenarios[@]} = 1 ]; then
  echo
  echo "(rafs scenarios skipped: see the message above)"
fi
