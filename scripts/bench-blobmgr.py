#!/usr/bin/env python3
"""Blob-manager benchmarks: the same image read through `rafs blobmgr`
clients and through standalone mounts, in one run, reported as ratios.

Image: a Debian bookworm minbase rootfs (scripts/debootstrap-rootfs.sh),
`rafs create` with defaults, blobs in a local directory.

1. warm  Reads served from the disk cache: a full `tar` of the mount after
         one filling pass, RAFS_BENCH_REPS times, with the page cache kept
         ("hot": the cache files stay in memory, the FUSE reads still reach
         the daemon) and dropped ("disk"). Standalone `--cache-dir` mount vs
         a `--blob-manager` mount. Also counts the protocol messages the
         manager client sent during the timed runs (target: 0; a hit needs
         no message) and prints the throughput ratio (target >= 0.95).
2. eight 8 mounts of the image started together, each running CMD
         (`chroot MNT sh -c "$CMD"`, default `dpkg -l >/dev/null && perl -e
         1`) with blobs served by nginx behind scripts/shaping-proxy.py
         (RAFS_BENCH_DELAY_MS 10 each way, RAFS_BENCH_RATE_MBIT 200): the
         time until all 8 commands finished and the bytes that crossed the
         link, for one manager, 8 independent cache dirs, and one cache dir
         shared by the 8 mounts. Fresh caches and page cache dropped before
         every run; the manager is started before the clock starts (it is a
         node's long-running daemon).
3. miss  Miss latency on the local `--blobs` backend (the worst case for an
         RPC): a cold `cat` of RAFS_BENCH_MISS_FILES (2000) small files, fresh
         cache each run, standalone vs manager; the difference per backend
         fetch is the manager's overhead per miss.

nydusd has no working blob manager (its `remote` module is disabled), so
there is no nydusd row here.

usage: scripts/bench-blobmgr.py        (root; builds target/release/rafs)
env:   RAFS_BENCH_CACHE (/var/tmp/rafs-bench), RAFS_BENCH_REPS (3),
       RAFS_BENCH_ONLY (e.g. "warm miss"), RAFS_BENCH_CMD,
       RAFS_BENCH_TREE (a rootfs to use instead of building one)
needs: debootstrap fuse3 nginx-light curl python3
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAFS = os.path.join(REPO, "target/release/rafs")
CACHE = os.environ.get("RAFS_BENCH_CACHE", "/var/tmp/rafs-bench")
REPS = int(os.environ.get("RAFS_BENCH_REPS", "3"))
ONLY = os.environ.get("RAFS_BENCH_ONLY", "warm eight miss").split()
CMD = os.environ.get("RAFS_BENCH_CMD", "dpkg -l >/dev/null && perl -e 1")
DELAY_MS = os.environ.get("RAFS_BENCH_DELAY_MS", "10")
RATE_MBIT = os.environ.get("RAFS_BENCH_RATE_MBIT", "200")
MISS_FILES = int(os.environ.get("RAFS_BENCH_MISS_FILES", "2000"))


def log(*a):
    print("bench-blobmgr:", *a, file=sys.stderr, flush=True)


def run(*argv, **kw):
    return subprocess.run(argv, check=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def wait_for(what, cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench-blobmgr: timed out waiting for {what}")
        time.sleep(0.02)


def metrics(api):
    """name -> value (summed over labels) from an API socket."""
    out = subprocess.run(
        ["curl", "-sf", "--unix-socket", api, "http://rafs/metrics"],
        capture_output=True, text=True).stdout
    m = {}
    for line in out.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, val = line.rsplit(" ", 1)
        name = name.split("{", 1)[0]
        try:
            m[name] = m.get(name, 0.0) + float(val)
        except ValueError:
            pass
    return m


class Proc:
    """A background daemon with its log."""

    def __init__(self, argv, log_path, ready=None):
        self.log = open(log_path, "ab")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=self.log)
        if ready:
            line = self.p.stdout.readline().decode()
            if not line.startswith(ready):
                raise SystemExit(f"bench-blobmgr: {argv[:2]} not ready: see {log_path}")

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def mount(boot, mnt, opts, work, name):
    os.makedirs(mnt, exist_ok=True)
    return Proc([RAFS, "mount", boot, mnt, *opts], f"{work}/{name}.log", ready="rafs: mounted")


def unmount(proc, mnt):
    proc.stop()
    wait_for(f"unmount of {mnt}", lambda: not os.path.ismount(mnt))


def manager(work, cache_dir, backend_opts, name="bm"):
    sock, api = f"{work}/{name}.sock", f"{work}/{name}-api.sock"
    for p in (sock, api):
        if os.path.exists(p):
            os.unlink(p)
    p = Proc([RAFS, "blobmgr", "--socket", sock, "--cache-dir", cache_dir,
              "--api-socket", api, *backend_opts], f"{work}/{name}.log")
    wait_for("the manager", lambda: os.path.exists(api) and bool(metrics(api)))
    return p, sock, api


def timed(cmd):
    t0 = time.monotonic()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def setup():
    os.makedirs(CACHE, exist_ok=True)
    if not os.path.exists(RAFS) or os.environ.get("RAFS_BENCH_BUILD", "1") == "1":
        run("cargo", "build", "--release", "--quiet", cwd=REPO)
    tree = os.environ.get("RAFS_BENCH_TREE") or f"{CACHE}/trees/rootfs"
    if not os.environ.get("RAFS_BENCH_TREE"):
        run("bash", f"{REPO}/scripts/debootstrap-rootfs.sh", tree)
    img = f"{CACHE}/images/blobmgr"
    stamp = f"{img}/.rafs-mtime"
    want = str(os.path.getmtime(RAFS))
    if not (os.path.exists(stamp) and open(stamp).read() == want):
        shutil.rmtree(img, ignore_errors=True)
        run(RAFS, "create", tree, "-o", img, "--no-progress", stdout=subprocess.DEVNULL)
        open(stamp, "w").write(want)
    return tree, f"{img}/bootstrap", f"{img}/blobs"


def client_messages(m):
    return sum(v for k, v in m.items() if k.startswith("rafs_blobmgr_client_messages"))


def bench_warm(work, boot, blobs):
    """Each timed run is a fresh mount (so the kernel's page cache of the
    mount is empty and every read reaches the daemon) over a full cache;
    "hot": the cache files are in the page cache, "disk": dropped too."""
    rows = {}
    tar = "tar cf - -C {} . | wc -c"
    for mode in ("standalone", "manager"):
        cache = f"{work}/warm-{mode}"
        mnt = f"{work}/mnt-warm-{mode}"
        bm = None
        if mode == "manager":
            bm, sock, _ = manager(work, cache, ["--blobs", blobs])
            base = ["--blobs", blobs, "--blob-manager", sock]
        else:
            base = ["--blobs", blobs, "--cache-dir", cache]
        api = f"{work}/warm-{mode}.sock"
        m = mount(boot, mnt, base + ["--api-socket", api], work, f"warm-{mode}")
        timed(tar.format(mnt))  # fill the cache
        unmount(m, mnt)  # a standalone mount writes everything before it exits
        os.sync()
        row = {"hot": [], "disk": [], "hits": 0, "fetch": 0, "messages": 0, "backend": 0}
        for kind in ("hot", "disk"):
            for _ in range(REPS):
                m = mount(boot, mnt, base + ["--api-socket", api], work, f"warm-{mode}")
                if kind == "disk":
                    drop_caches()
                before = metrics(api)
                row[kind].append(timed(tar.format(mnt)))
                after = metrics(api)
                unmount(m, mnt)
                d = lambda k: after.get(k, 0) - before.get(k, 0)
                row["hits"] += d("rafs_cache_hits_total")
                row["backend"] += d("rafs_backend_requests_total")
                row["messages"] += client_messages(after) - client_messages(before)
                row["fetch"] += sum(v for k, v in after.items() if k == "rafs_manager_requests_total") - \
                    sum(v for k, v in before.items() if k == "rafs_manager_requests_total")
        rows[mode] = row
        if bm:
            bm.stop()
    s, b = rows["standalone"], rows["manager"]
    med = statistics.median
    print("\n## warm reads (full tar of a fresh mount over a full cache, median of %d)\n" % REPS)
    print("| | standalone --cache-dir | --blob-manager | manager throughput / standalone |")
    print("|---|---|---|---|")
    for k in ("hot", "disk"):
        print(f"| {k} | {med(s[k]):.3f} s | {med(b[k]):.3f} s | {med(s[k]) / med(b[k]):.2f} |")
    print(f"| chunk reads served from the cache (all runs) | {s['hits']:.0f} | {b['hits']:.0f} | |")
    print(f"| Fetch requests to the manager | | {b['fetch']:.0f} | |")
    print(f"| messages to the manager (all kinds; Used is batched, about 1/s) | | {b['messages']:.0f} | |")
    print(f"| backend requests | {s['backend']:.0f} | {b['backend']:.0f} | |")


def nginx(root, work):
    port = free_port()
    conf = f"{work}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""daemon off; worker_processes 2; pid {work}/nginx.pid;
error_log {work}/nginx.err; events {{}}
http {{ access_log off; server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""")
    p = subprocess.Popen(["nginx", "-c", conf, "-p", work], stderr=subprocess.DEVNULL)
    wait_for("nginx", lambda: port_open(port))
    return p, port


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def proxy_bytes(proxy, stats):
    if os.path.exists(stats):
        os.unlink(stats)
    proxy.send_signal(signal.SIGUSR1)
    wait_for("proxy stats", lambda: os.path.exists(stats) and os.path.getsize(stats) > 0, 10)
    return json.load(open(stats))["bytes_down"]


def eight_once(work, boot, url, mode, proxy, stats):
    caches = f"{work}/eight-{mode}"
    shutil.rmtree(caches, ignore_errors=True)
    os.makedirs(caches)
    bm = None
    if mode == "manager":
        bm, sock, _ = manager(work, f"{caches}/shared", ["--backend", url])
    drop_caches()
    b0 = proxy_bytes(proxy, stats)
    t0 = time.monotonic()
    mounts = []
    procs = []
    for i in range(8):
        mnt = f"{work}/mnt-eight-{i}"
        opts = ["--backend", url, "--dev"]  # the rootfs's /dev/null
        opts += {"manager": lambda: ["--blob-manager", sock],
                 "independent": lambda: ["--cache-dir", f"{caches}/c{i}"],
                 "shared": lambda: ["--cache-dir", f"{caches}/shared"]}[mode]()
        os.makedirs(mnt, exist_ok=True)
        # Each mount runs its command as soon as it is ready.
        sh = (f'{RAFS} mount {boot} {mnt} {" ".join(opts)} >{work}/eight-{i}.out 2>>{work}/eight-{i}.log & '
              f'for _ in $(seq 1200); do grep -q "^rafs: mounted" {work}/eight-{i}.out && break; sleep 0.01; done; '
              f'chroot {mnt} /bin/sh -c "{CMD}"')
        procs.append(subprocess.Popen(["bash", "-c", sh], stdout=subprocess.DEVNULL))
        mounts.append(mnt)
    codes = [p.wait() for p in procs]
    elapsed = time.monotonic() - t0
    fetched = proxy_bytes(proxy, stats) - b0
    for mnt in mounts:
        subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL)
        wait_for(f"unmount {mnt}", lambda: not os.path.ismount(mnt))
    if bm:
        bm.stop()
    if any(codes):
        raise SystemExit(f"bench-blobmgr: a command failed in mode {mode}: {codes}")
    return elapsed, fetched


def bench_eight(work, boot, blobs):
    ng, port = nginx(blobs, work)
    stats = f"{work}/proxy-stats.json"
    proxy = subprocess.Popen(
        ["python3", f"{REPO}/scripts/shaping-proxy.py", "--listen", "127.0.0.1:0",
         "--upstream", f"127.0.0.1:{port}", "--delay-ms", DELAY_MS, "--rate-mbit", RATE_MBIT,
         "--stats", stats], stdout=subprocess.PIPE, text=True)
    addr = proxy.stdout.readline().strip().removeprefix("listening on ")
    url = f"http://{addr}/"
    rows = {}
    try:
        for mode in ("manager", "independent", "shared"):
            runs = [eight_once(work, boot, url, mode, proxy, stats) for _ in range(REPS)]
            rows[mode] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    finally:
        proxy.terminate()
        ng.terminate()
    base = rows["manager"]
    print(f"\n## 8 mounts started together over {DELAY_MS} ms / {RATE_MBIT} Mbit/s "
          f"(`{CMD}` in each, median of {REPS})\n")
    print("| caches | all 8 done | vs manager | bytes over the link | vs manager |")
    print("|---|---|---|---|---|")
    for mode, (t, b) in rows.items():
        print(f"| {mode} | {t:.2f} s | {t / base[0]:.2f}x | {b / 2**20:.1f} MiB | {b / max(base[1], 1):.2f}x |")


def bench_miss(work, boot, blobs, tree):
    files = subprocess.run(
        f"cd {tree} && find . -type f -size -64k | sort | head -{MISS_FILES}",
        shell=True, capture_output=True, text=True, check=True).stdout.split()
    listf = f"{work}/miss-files"
    open(listf, "w").write("\n".join(files) + "\n")
    rows = {}
    for mode in ("standalone", "manager"):
        times, fetches = [], []
        for _ in range(REPS):
            cache = f"{work}/miss-{mode}"
            shutil.rmtree(cache, ignore_errors=True)
            api = f"{work}/miss-{mode}.sock"
            mnt = f"{work}/mnt-miss-{mode}"
            bm = None
            if mode == "manager":
                bm, sock, bm_api = manager(work, cache, ["--blobs", blobs])
                opts = ["--blobs", blobs, "--blob-manager", sock, "--api-socket", api]
            else:
                opts = ["--blobs", blobs, "--cache-dir", cache, "--api-socket", api]
            m = mount(boot, mnt, opts, work, f"miss-{mode}")
            drop_caches()
            times.append(timed(f"cd {mnt} && xargs -a {listf} cat | wc -c"))
            if bm:
                fetches.append(metrics(bm_api).get("rafs_blobmgr_backend_requests_total", 0))
            else:
                fetches.append(metrics(api).get("rafs_backend_requests_total", 0))
            unmount(m, mnt)
            if bm:
                bm.stop()
        rows[mode] = (statistics.median(times), statistics.median(fetches))
    (ts, fs), (tm, fm) = rows["standalone"], rows["manager"]
    per = (tm - ts) / max(fm, 1) * 1e6
    print(f"\n## miss latency, local --blobs backend (cold cat of {len(files)} small files, median of {REPS})\n")
    print("| | time | backend fetches |")
    print("|---|---|---|")
    print(f"| standalone --cache-dir | {ts:.3f} s | {fs:.0f} |")
    print(f"| --blob-manager | {tm:.3f} s ({tm / ts:.2f}x) | {fm:.0f} |")
    print(f"\nmanager overhead per fetch: {per:.0f} us")


def main():
    if os.geteuid() != 0:
        raise SystemExit("bench-blobmgr: run as root (FUSE mounts, drop_caches, chroot)")
    tree, boot, blobs = setup()
    work = tempfile.mkdtemp(prefix="bench-blobmgr-", dir=CACHE)
    try:
        if "warm" in ONLY:
            bench_warm(work, boot, blobs)
        if "eight" in ONLY:
            bench_eight(work, boot, blobs)
        if "miss" in ONLY:
            bench_miss(work, boot, blobs, tree)
    finally:
        subprocess.run(f"grep -o '{work}[^ ]*' /proc/mounts | xargs -r -n1 umount -l",
                       shell=True, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
