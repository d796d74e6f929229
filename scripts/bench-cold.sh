#!/usr/bin/env bash
# Cold-start benchmark (issue 12): run real commands in a Debian rootfs served
# lazily by `rafs mount` (and, when NYDUSD and NYDUS_IMAGE are set, by nydusd)
# from an OCI registry behind a shaped link, against pulling the rootfs
# tar.gz through the same link, extracting it and running the command.
#
# Setup, once for all commands (cached under the bench dir where possible):
#   - cargo build --release (unless RAFS_BIN);
#   - a Debian bookworm minbase rootfs (scripts/debootstrap-rootfs.sh), or
#     RAFS_BENCH_TREE;
#   - `rafs create` of it (bootstrap + blobs/<sha256>), rebuilt when the
#     rafs binary changes; rootfs.tar.gz of the same tree (gzip -6);
#     with nydus: `nydus-image create -t dir-rafs` (RAFS v6 unless
#     NYDUS_FS_VERSION=5; see scripts/bench-nydus.sh), bootstrap kept local;
#   - a local `docker-registry serve` (filesystem storage in the bench dir,
#     HTTPS with a self-signed cert when RAFS_BENCH_TLS=1); rafs's blobs,
#     nydus's blobs and the tar.gz are pushed with curl (monolithic upload:
#     POST .../blobs/uploads/, PUT ?digest=); a rafs blob and the tar.gz are
#     read back through the proxy and their sha256 checked;
#   - scripts/shaping-proxy.py (TCP, so TLS passes through) in front of the
#     registry: RAFS_BENCH_DELAY_MS (10) each way, RAFS_BENCH_RATE_MBIT
#     (200) per direction; the tar.gz's read-back must be no faster than
#     size / rate.
#
# Commands (the issue's three; RAFS_BENCH_CMD runs just that one), each in
# bubblewrap with the tree as `/` (read-only; real /dev, /proc; tmpfs /tmp):
#   python3 -c "import json, http.client, email.parser, sqlite3, decimal"
#   cd /tmp && echo 'int main(void){return 0;}' > t.c && gcc -pipe -S t.c
#   dpkg -l >/dev/null && perl -MPOSIX -e 1 && git --version
#
# Rows per command, each RAFS_BENCH_REPS (3) times, page cache dropped before
# every run, time = median:
#   pull        the issue's pull: curl the tar.gz through the proxy to a file,
#               then `tar -xzf` it, then the command (sequential).
#   stream      curl piped into `tar -xzf` (download and extraction overlap),
#               then the command.
#   cold        from starting `rafs mount BOOTSTRAP MNT --backend
#               registry+http://PROXY/rafs/rootfs --cache-dir FRESH
#               --api-socket SOCK` to the end of the command (the unmount is
#               not timed).
#   warm        the same with the cache dir of a cold run kept.
#   (record)    untimed: a fresh-cache mount with --record-access LIST.
#   listmount   fresh cache, LIST prefetched on mount (--prefetch-list).
#   prefetched  `rafs prefetch --list LIST` into a fresh cache, then the mount
#               and the command (both timed).
#   all         fresh cache, --prefetch-all on mount.
#   nydusd-cold nydusd (--rlimit-nofile 0) with the registry backend through
#               the proxy, local bootstrap, a fresh blobcache dir: from its
#               start to the end of the command.
#   nydusd-warm the same with the blobcache dir of a nydusd-cold run kept.
# Columns: time; bytes the proxy sent downstream (HTTP headers included);
# the daemon's rafs_backend_bytes_total (GET /metrics on the API socket);
# bytes / needed; speed-up vs pull and vs stream; daemon peak RSS (VmHWM of
# the daemon just before unmount, max over the reps).
#
# needed: the compressed bytes of the ranges the command reads. The ranges
# come from the record run's list (path TAB START-END,...); each chunk of a
# read file counts compressed_size * overlap / length, a batch member
# compressed_size (the frame's) * overlap / batch_size, from `rafs inspect
# BOOTSTRAP --file PATH --json` (RAFS_INSPECT_BIN, default the rafs binary;
# it must print batch_size, else needed is "-"). floor = needed at the link
# rate + the warm time. Also printed beside needed: the stored bytes of the
# whole frames holding those ranges, the least any fetch in frames can get
# (a batch frame holds many small files, a chunk up to 4 MiB of a large one). Also printed: the sizes of the distinct files the
# command opens (strace of a run in the extracted tree, once, untimed: an
# upper bound of what it reads, without the ELF interpreter).
#
# Targets (issue 12), printed met / NOT met per command: cold <= 1.5x floor;
# cold >= 12x faster than pull; cold fetched <= 1.2x needed; listmount >= 20x
# faster than pull. Printed before them: the bounds no fetch in whole frames
# can beat (the frames' bytes at the link rate against pull, and against
# needed), to tell a target out of reach of the image's frames from one the
# fetcher misses.
#
# TLS (RAFS_BENCH_TLS=1): `openssl req -x509` makes a cert (SAN 127.0.0.1)
# in the bench dir; curl gets --cacert; rafs gets --backend
# registry://PROXY/REPO --ca-cert CERT (the rafs rows are skipped with a
# message when `rafs mount --help` has no --ca-cert); nydusd gets scheme
# https with skip_verify.
#
# The rafs rows need `rafs mount` with --cache-dir and the registry backend;
# with a binary that lacks them (or RAFS_BENCH_SKIP_RAFS=1) they are skipped
# with a message and everything else still runs.
#
# usage: scripts/bench-cold.sh   (as root, on Debian; installs missing
#                                 docker-registry python3 curl fuse3
#                                 debootstrap strace bubblewrap openssl)
# env:   RAFS_BENCH_DIR (/var/tmp/rafs-bench): every file this script writes
#        RAFS_BENCH_REPS (3), RAFS_BENCH_DELAY_MS (10), RAFS_BENCH_RATE_MBIT (200)
#        RAFS_BENCH_TREE (a prebuilt rootfs, only read: no debootstrap),
#        RAFS_DEBIAN_INCLUDE (packages added to minbase, e.g. the issue-12
#        image: python3,gcc,g++,git,perl),
#        RAFS_BENCH_CMD (one command instead of the three), RAFS_BENCH_TLS,
#        RAFS_BENCH_SKIP_RAFS, RAFS_BENCH_CREATE_ARGS (extra `rafs create`
#        flags), RAFS_BENCH_MOUNT_ARGS (extra `rafs mount` flags), RAFS_BIN
#        (a prebuilt binary: no cargo build), RAFS_INSPECT_BIN,
#        NYDUSD, NYDUS_IMAGE, NYDUS_FS_VERSION (scripts/bench-nydus.sh)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bench=${RAFS_BENCH_DIR:-/var/tmp/rafs-bench}
work=$bench/cold
reps=${RAFS_BENCH_REPS:-3}
delay_ms=${RAFS_BENCH_DELAY_MS:-10}
rate_mbit=${RAFS_BENCH_RATE_MBIT:-200}
if [ -n "${RAFS_BENCH_CMD:-}" ]; then
  cmds=("$RAFS_BENCH_CMD")
else
  cmds=(
    'python3 -c "import json, http.client, email.parser, sqlite3, decimal"'
    "cd /tmp && echo 'int main(void){return 0;}' > t.c && gcc -pipe -S t.c"
    'dpkg -l >/dev/null && perl -MPOSIX -e 1 && git --version'
  )
fi
repo_name=rafs/rootfs
rafs=${RAFS_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/rafs}
inspect_bin=${RAFS_INSPECT_BIN:-$rafs}
tls=${RAFS_BENCH_TLS:-0}

log() { echo "bench-cold: $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
# shellcheck source=scripts/bench-nydus.sh
. "$(dirname "$0")/bench-nydus.sh"

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
    fusermount3:fuse3 debootstrap:debootstrap strace:strace bwrap:bubblewrap openssl:openssl; do
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
for f in /usr/bin/dpkg /usr/bin/perl /usr/bin/python3 /usr/bin/gcc /usr/bin/git; do
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

# nydus image of the same tree (built once per fs-version; bootstrap local).
nydus=0
if nydus_available; then
  nimage=$work/nydus-v$(nydus_fs_version)
  nydus_create "$rootfs" "$nimage" || die "nydus-image create failed"
  nydus=1
else
  log "NYDUSD and NYDUS_IMAGE not both set: nydusd rows skipped"
fi

# ---- TLS (RAFS_BENCH_TLS=1): a self-signed cert for 127.0.0.1
scheme=http
curl_tls=()
if [ "$tls" = 1 ]; then
  scheme=https
  cert=$work/tls/server.pem
  if [ ! -f "$cert" ]; then
    mkdir -p "$work/tls"
    # An end-entity certificate: webpki (rustls) refuses a CA one, which
    # is what `req -x509` makes by default, as a server's.
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=127.0.0.1 \
      -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
      -addext extendedKeyUsage=serverAuth -keyout "$work/tls/key.pem" -out "$cert.partial" 2>/dev/null ||
      die "openssl req -x509 failed"
    mv "$cert.partial" "$cert"
  fi
  curl_tls=(--cacert "$cert")
fi
curl_() { curl "${curl_tls[@]}" "$@"; }

# ---- registry
reg_port=$(free_port)
reg_dir=$work/registry
# Fresh storage each run: pushing is local and quick, and blobs of older
# images do not pile up.
rm -rf "$reg_dir"
mkdir -p "$reg_dir/data"
tls_yml=
[ "$tls" = 1 ] && tls_yml="
  tls:
    certificate: $cert
    key: $work/tls/key.pem"
cat >"$reg_dir/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $reg_dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$reg_port$tls_yml
YML
docker-registry serve "$reg_dir/config.yml" >"$reg_dir/log" 2>&1 &
pids+=($!)
reg_pid=$!
reg=$scheme://127.0.0.1:$reg_port
for i in $(seq 100); do
  curl_ -sf -o /dev/null "$reg/v2/" && break
  kill -0 "$reg_pid" 2>/dev/null || { tail "$reg_dir/log" >&2; die "docker-registry exited"; }
  [ "$i" -lt 100 ] || die "docker-registry did not answer on $reg within 10 s"
  sleep 0.1
done

# push_blob FILE HEX: monolithic upload unless the registry has it already.
push_blob() {
  local file=$1 hex=$2 loc
  [[ $hex =~ ^[0-9a-f]{64}$ ]] || die "unexpected blob name $file"
  if curl_ -sf -o /dev/null -I "$reg/v2/$repo_name/blobs/sha256:$hex"; then
    return 0
  fi
  loc=$(curl_ -sf --max-time 30 -X POST -D - -o /dev/null "$reg/v2/$repo_name/blobs/uploads/" |
    awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')
  [ -n "$loc" ] || die "no Location from POST $reg/v2/$repo_name/blobs/uploads/"
  case $loc in /*) loc=$reg$loc ;; esac
  case $loc in *\?*) loc="$loc&digest=sha256:$hex" ;; *) loc="$loc?digest=sha256:$hex" ;; esac
  curl_ -sf --max-time 600 -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
    -T "$file" "$loc" || die "PUT of $file failed"
}
log "pushing $(find "$image/blobs" -type f | wc -l) rafs blobs and the tarball to $reg/$repo_name"
for f in "$image"/blobs/*; do push_blob "$f" "$(basename "$f")"; done
push_blob "$tarball" "$tar_hex"
if [ "$nydus" = 1 ]; then
  # nydus-image names a blob by its sha256, which the registry checks on PUT.
  log "pushing $(find "$nimage/blobs" -type f | wc -l) nydus blobs"
  for f in "$nimage"/blobs/*; do push_blob "$f" "$(basename "$f")"; done
  nydus_bytes=$(du -cb "$nimage"/blobs/* | tail -1 | cut -f1)
fi

# ---- shaping proxy
proxy_stats=$work/proxy-stats.json
python3 "$repo/scripts/shaping-proxy.py" --listen 127.0.0.1:0 --upstream "127.0.0.1:$reg_port" \
  --delay-ms "$delay_ms" --rate-mbit "$rate_mbit" --stats "$proxy_stats" \
  >"$work/proxy.out" 2>"$work/proxy.err" &
pids+=($!)
proxy_pid=$!
wait_for_line "$work/proxy.out" 10 '^listening on ' "$proxy_pid" || die "shaping proxy did not start: $(cat "$work/proxy.err")"
proxy=$(sed -n 's/^listening on //p' "$work/proxy.out")
purl=$scheme://$proxy

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
  got=$(curl_ -sfL --max-time 300 "$purl/v2/$repo_name/blobs/sha256:$hex" | sha256sum | cut -c1-64)
  t1=$(now_ns)
  [ "$got" = "$hex" ] || die "blob $hex read back through the proxy has sha256 $got"
done
min_ns=$(python3 -c "r = $rate_mbit; print(int($tar_bytes * 8 / (r * 1e6) * 1e9) if r else 0)")
log "registry $reg, proxy $purl (${delay_ms} ms each way, ${rate_mbit} Mbit/s): blobs read back intact;" \
  "tarball pulled in $(secs $((t1 - t0))) s (at least $(secs "$min_ns") s at that rate)"
[ $((t1 - t0)) -ge "$min_ns" ] || die "the shaping proxy is faster than its rate limit"

# ---- bytes of the files CMD reads (see the header), once per command, untimed
# read_bytes_of CMD: prints the total size of the distinct files CMD opens.
read_bytes_of() {
  local c=$1 ref=$work/ref-root f
  # Cached per command and tarball.
  f=$work/read-bytes.$(printf '%s\n%s' "$c" "$tar_hex" | sha256sum | cut -c1-16)
  if [ ! -f "$f" ]; then
    rm -rf "$ref" && mkdir -p "$ref"
    tar -xzf "$tarball" -C "$ref"
    in_root "$ref" "$c" strace -f -qq -e trace=openat,execve -o "$work/strace.log" >/dev/null
    python3 - "$ref" "$work/strace.log" >"$f.partial" <<'PY'
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
PY
    mv "$f.partial" "$f"
    rm -rf "$ref"
  fi
  cat "$f"
}

# needed_of LIST: compressed bytes of the ranges in LIST (see the header),
# then the stored bytes of the whole frames holding them (the least a fetch
# in frames can get), or "- -" when `rafs inspect --json` does not give
# batch_size.
needed_of() {
  python3 - "$inspect_bin" "$bootstrap" "$1" <<'PY' || echo "- -"
import json, os, subprocess, sys
rafs, boot, lst = sys.argv[1:4]
need = 0.0
frames = {}
for raw in open(lst, "rb"):
    line = raw.rstrip(b"\n")
    if not line.strip() or line.startswith(b"#"):
        continue
    path, _, rs = line.partition(b"\t")
    out = subprocess.run([os.fsencode(rafs), b"inspect", os.fsencode(boot), b"--file", path, b"--json"],
                         capture_output=True)
    if out.returncode != 0:
        sys.exit(f"rafs inspect --file {path!r}: {out.stderr.decode(errors='replace').strip()}")
    j = json.loads(out.stdout)
    ranges = [tuple(map(int, r.split(b"-"))) for r in rs.split(b",")] if rs else [(0, j["size"])]
    for c in j.get("chunks", []):
        if c["flags"] == "hole":
            continue
        if "batch_size" not in c:
            print("bench-cold: rafs inspect --json has no batch_size (set RAFS_INSPECT_BIN): needed unknown",
                  file=sys.stderr)
            sys.exit(3)
        cs, ce = c["file_offset"], c["file_offset"] + c["length"]
        ov = sum(max(0, min(b, ce) - max(a, cs)) for a, b in ranges)
        if ov:
            need += c["compressed_size"] * ov / (c["batch_size"] or c["length"])
            frames[(c["blob"], c["compressed_offset"])] = c["compressed_size"]
print(int(need), sum(frames.values()))
PY
}

# ---- rows. Per command: times, bytes, metric and hwm (kB) of each row,
# space-separated over the reps.
declare -A times bytes metric hwm
# note ROW T0 T1 B0 [METRIC [HWM]]: adds one rep's figures to ROW.
note() {
  times[$1]+=" $(($3 - $2))"
  bytes[$1]+=" $(($(proxy_bytes) - $4))"
  metric[$1]+=" ${5:--}"
  hwm[$1]+=" ${6:--}"
}

run_pull() { # MODE (pull | stream) CMD
  local dir=$work/base file=$work/pull.tar.gz b0 t0 t1
  rm -rf "$dir" "$file" && mkdir -p "$dir"
  drop_caches
  b0=$(proxy_bytes)
  t0=$(now_ns)
  if [ "$1" = pull ]; then
    curl_ -sfL --max-time 600 -o "$file" "$purl/v2/$repo_name/blobs/sha256:$tar_hex"
    tar -xzf "$file" -C "$dir"
  else
    curl_ -sfL --max-time 600 "$purl/v2/$repo_name/blobs/sha256:$tar_hex" | tar -xzf - -C "$dir"
  fi
  in_root "$dir" "$2" >/dev/null || die "command failed in the extracted tree ($1)"
  t1=$(now_ns)
  note "$1" "$t0" "$t1" "$b0"
  rm -rf "$dir" "$file"
}

rafs_supported() {
  [ "${RAFS_BENCH_SKIP_RAFS:-0}" = 1 ] && { log "RAFS_BENCH_SKIP_RAFS=1: rafs rows skipped"; return 1; }
  local help
  help=$("$rafs" mount --help 2>&1) || true
  grep -q -- '--cache-dir' <<<"$help" || { log "rafs mount has no --cache-dir yet: rafs rows skipped"; return 1; }
  grep -q 'registry+http' <<<"$help" || { log "rafs mount has no registry backend yet: rafs rows skipped"; return 1; }
  if [ "$tls" = 1 ] && ! grep -q -- '--ca-cert' <<<"$help"; then
    # A build from before --ca-cert (the ureq client) may be a measurement
    # build that trusts RAFS_BENCH_CA instead: RAFS_BENCH_CA_ENV=1 says so.
    [ "${RAFS_BENCH_CA_ENV:-0}" = 1 ] && return 0
    log "RAFS_BENCH_TLS=1 but rafs mount has no --ca-cert: rafs rows skipped"
    return 1
  fi
}
prefetch_supported() {
  "$rafs" mount --help 2>&1 | grep -q -- '--record-access' && "$rafs" prefetch --help >/dev/null 2>&1
}
rafs_backend=(--backend "registry+http://$proxy/$repo_name")
if [ "$tls" = 1 ]; then
  rafs_backend=(--backend "registry://$proxy/$repo_name" --ca-cert "$cert")
  if [ "${RAFS_BENCH_CA_ENV:-0}" = 1 ]; then
    rafs_backend=(--backend "registry://$proxy/$repo_name")
    export RAFS_BENCH_CA=$cert
  fi
fi

# run_rafs SCENARIO REP CMD LIST: cold (fresh cache), warm (the cold run's
# cache), record (fresh cache, --record-access LIST), listmount (fresh
# cache, --prefetch-list LIST), prefetched (`rafs prefetch --list LIST` into
# a fresh cache, timed, then the mount), all (--prefetch-all).
run_rafs() {
  local scen=$1 rep=$2 c=$3 list=$4 mnt=$work/mnt cache=$work/cache.$2 sock=$work/api.sock
  local out=$work/rafs.$1.$2.out err=$work/rafs.$1.$2.err b0 t0 t1 pid m h i extra=()
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
    "$rafs" prefetch "$bootstrap" "${rafs_backend[@]}" --cache-dir "$cache" --list "$list" \
      --no-progress >"$work/prefetch.$rep.out" 2>&1 || die "rafs prefetch failed: $(tail -5 "$work/prefetch.$rep.out")"
  fi
  # shellcheck disable=SC2086 # RAFS_BENCH_MOUNT_ARGS is a list of flags
  "$rafs" mount "$bootstrap" "$mnt" "${rafs_backend[@]}" --cache-dir "$cache" --api-socket "$sock" \
    "${extra[@]}" ${RAFS_BENCH_MOUNT_ARGS:-} </dev/null >"$out" 2>"$err" &
  pid=$!
  pids+=("$pid")
  mounts+=("$mnt")
  wait_for_line "$out" 60 '^rafs: mounted' "$pid" || { tail -20 "$err" >&2; die "rafs mount ($scen $rep) did not become ready"; }
  in_root "$mnt" "$c" >/dev/null || die "command failed in the rafs mount ($scen $rep);" \
    "$(mountpoint "$mnt" 2>&1); top level: $(find "$mnt" -mindepth 1 -maxdepth 1 -printf "%f " 2>&1); daemon log: $(tail -5 "$err")"
  t1=$(now_ns)
  m=$(curl -sf --max-time 10 --unix-socket "$sock" http://x/metrics |
    awk '$1 == "rafs_backend_bytes_total" { s += $2 } END { if (NR) printf "%d", s }' || true)
  h=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
  [ "$scen" = record ] || note "$scen" "$t0" "$t1" "$b0" "$m" "$h"
  fusermount3 -u "$mnt" || kill -TERM "$pid"
  for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; log "rafs daemon needed SIGKILL"; }
  wait "$pid" 2>/dev/null || true
}

# run_nydusd SCENARIO (nydusd-cold | nydusd-warm) REP CMD
run_nydusd() {
  local scen=$1 c=$3 mnt=$work/nmnt cache=$work/ncache.$2 conf=$work/nydusd.json
  local b0 t0 t1 pid h
  mkdir -p "$mnt"
  [ "$scen" = nydusd-warm ] || rm -rf "$cache"
  mkdir -p "$cache"
  nydus_config_registry "$scheme" "$proxy" "$repo_name" "$cache" >"$conf"
  drop_caches
  b0=$(proxy_bytes)
  t0=$(now_ns)
  nydus_mount "$nimage/bootstrap" "$mnt" "$conf" "$work/nydusd.log" "$work/nydusd.pid" ||
    die "nydusd did not mount"
  pid=$(cat "$work/nydusd.pid")
  pids+=("$pid")
  mounts+=("$mnt")
  in_root "$mnt" "$c" >/dev/null || die "command failed in the nydusd mount; log: $(tail -5 "$work/nydusd.log")"
  t1=$(now_ns)
  h=$(daemon_stop "$pid" "$mnt")
  note "$scen" "$t0" "$t1" "$b0" - "$h"
  wait "$pid" 2>/dev/null || true
}

# bench_command IDX CMD: every row of CMD, then its table.
bench_command() {
  local idx=$1 c=$2 r s list=$work/access.$1.list
  times=() bytes=() metric=() hwm=()
  rows=(pull stream)
  for s in pull stream; do
    for ((r = 1; r <= reps; r++)); do
      log "[$idx] $s run $r/$reps"
      run_pull "$s" "$c"
    done
  done
  needed=- in_frames=-
  if [ "$rafs_ok" = 1 ]; then
    rows+=(cold warm)
    for s in cold warm; do
      for ((r = 1; r <= reps; r++)); do
        log "[$idx] rafs $s run $r/$reps"
        run_rafs "$s" "$r" "$c" "$list"
      done
    done
    if prefetch_supported; then
      log "[$idx] recording the command's accesses"
      rm -f "$list"
      run_rafs record 0 "$c" "$list"
      [ -s "$list" ] || die "--record-access wrote no list"
      read -r needed in_frames <<<"$(needed_of "$list")"
      rows+=(listmount prefetched all)
      for s in listmount prefetched all; do
        for ((r = 1; r <= reps; r++)); do
          log "[$idx] rafs $s run $r/$reps"
          run_rafs "$s" "$r" "$c" "$list"
        done
      done
    else
      log "no prefetch support in this binary: record/prefetch rows and needed skipped"
    fi
  fi
  if [ "$nydus" = 1 ]; then
    rows+=(nydusd-cold nydusd-warm)
    for s in nydusd-cold nydusd-warm; do
      for ((r = 1; r <= reps; r++)); do
        log "[$idx] $s run $r/$reps"
        run_nydusd "$s" "$r" "$c"
      done
    done
  fi
  report "$c" "$(read_bytes_of "$c")"
}

py() { python3 -c "print($1)"; }
# med ARRAY_NAME ROW: the median of a row's figures ("-" if none).
med() {
  local -n a=$1
  # shellcheck disable=SC2086 # the accumulated lists split on spaces
  case " ${a[$2]:-} " in *" - "* | "  ") echo - ;; *) median ${a[$2]} ;; esac
}

# report CMD READ_BYTES: the table of the rows of one command, then its
# floor and targets.
report() {
  local c=$1 rb=$2 s t b mm hh xn vs_pull vs_stream
  local pull_ns stream_ns
  pull_ns=$(med times pull) stream_ns=$(med times stream)
  echo
  echo "### \`$c\`"
  echo
  local hn=-
  [ "$needed" = - ] || hn=$(human "$needed")
  [ "$in_frames" = - ] || hn+="; in whole frames: $(human "$in_frames") ($(py "f'{$in_frames / max($needed, 1):.2f}'")x needed, the least a fetch in frames gets)"
  echo "files the command opens: $(human "$rb"); needed: $hn"
  echo
  echo "| row | time (s) | bytes fetched (proxy) | rafs_backend_bytes_total | x needed | speed-up vs pull | vs stream | daemon peak RSS |"
  echo "|---|---|---|---|---|---|---|---|"
  for s in "${rows[@]}"; do
    t=$(med times "$s") b=$(med bytes "$s") mm=$(med metric "$s") hh=-
    # shellcheck disable=SC2086 # the accumulated lists split on spaces
    case " ${hwm[$s]} " in *" - "*) ;; *) hh="$(py "f'{$(printf '%s\n' ${hwm[$s]} | sort -n | tail -1) / 1024:.1f}'") MiB" ;; esac
    [ "$mm" = - ] || mm=$(human "$mm")
    xn=-
    [ "$needed" = - ] || xn=$(py "f'{$b / max($needed, 1):.2f}x'")
    vs_pull=$(py "f'{$pull_ns / max($t, 1):.1f}x'")
    vs_stream=$(py "f'{$stream_ns / max($t, 1):.1f}x'")
    echo "| $s | $(secs "$t") | $(human "$b") | $mm | $xn | $vs_pull | $vs_stream | $hh |"
  done
  # Every run's time, so that the spread behind each median shows.
  local line="each run (s):" x
  for s in "${rows[@]}"; do
    line+=" $s"
    # shellcheck disable=SC2086 # the accumulated lists split on spaces
    for x in ${times[$s]}; do line+=" $(secs "$x")"; done
    line+=";"
  done
  echo
  echo "${line%;}"
  report_targets "$pull_ns"
}

# report_targets PULL_NS: floor, the ratios and the issue's targets.
report_targets() {
  local pull_ns=$1 cold warm lm fetched floor
  cold=$(med times cold) warm=$(med times warm) lm=$(med times listmount) fetched=$(med bytes cold)
  echo
  if [ "$cold" = - ]; then
    echo "(no rafs rows: see the messages above)"
    return 0
  fi
  if [ "$needed" = - ]; then
    echo "floor: - (needed unknown)"
  else
    floor=$(py "int($needed * 8 / ($rate_mbit * 1e6) * 1e9) + $warm")
    echo "floor = needed at ${rate_mbit} Mbit/s + warm = $(secs "$floor") s;" \
      "cold/floor $(py "f'{$cold / $floor:.2f}'"); fetched/needed $(py "f'{$fetched / max($needed, 1):.2f}'")"
  fi
  echo "pull/cold $(py "f'{$pull_ns / $cold:.1f}'")$([ "$lm" = - ] || echo "; pull/listmount $(py "f'{$pull_ns / $lm:.1f}'")")"
  if [ "$in_frames" != - ] && [ "$needed" != - ]; then
    # What no fetch in whole frames can beat, with any list or prediction:
    # moving those frames over the link (the command's CPU may overlap).
    local least
    least=$(py "int($in_frames * 8 / ($rate_mbit * 1e6) * 1e9)")
    echo "bounds of any fetch in whole frames: $(human "$in_frames") take $(secs "$least") s at ${rate_mbit} Mbit/s," \
      "so pull/(cold or listmount) <= $(py "f'{$pull_ns / max($least, 1):.1f}'")" \
      "and fetched/needed >= $(py "f'{$in_frames / max($needed, 1):.2f}'")"
  fi
  echo
  verdict() { py "'met' if $1 else 'NOT met'"; }
  if [ "$needed" != - ]; then
    echo "- cold <= 1.5x floor: $(verdict "$cold <= 1.5 * $floor")"
    echo "- fetched <= 1.2x needed: $(verdict "$fetched <= 1.2 * $needed")"
  fi
  echo "- cold >= 12x faster than pull: $(verdict "$pull_ns >= 12 * $cold")"
  [ "$lm" = - ] || echo "- listmount >= 20x faster than pull: $(verdict "$pull_ns >= 20 * $lm")"
}

rafs_ok=0
rafs_supported && rafs_ok=1
echo
echo "## rafs cold start ($(date -u +%F), ${delay_ms} ms each way, ${rate_mbit} Mbit/s, $scheme, median of $reps)"
echo
echo "image: $(human "$image_bytes") of rafs blobs$([ "$nydus" = 1 ] && echo ", $(human "$nydus_bytes") of nydus blobs (nydus-image create fs-version $(nydus_fs_version))"); rootfs.tar.gz: $(human "$tar_bytes")"
echo "each command: bwrap (ROOT as /, ro; /dev, /proc, tmpfs /tmp) /bin/sh -c CMD; machine: $(nproc) cores (shared: figures are noisy)"
for ((ci = 0; ci < ${#cmds[@]}; ci++)); do
  bench_command "$((ci + 1))" "${cmds[$ci]}"
done
