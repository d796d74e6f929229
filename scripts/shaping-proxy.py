#!/usr/bin/env python3
"""A TCP proxy that shapes traffic like a WAN link, for benchmarks.

usage: shaping-proxy.py --listen 127.0.0.1:PORT --upstream HOST:PORT
                        [--delay-ms 10] [--rate-mbit 200] [--stats FILE]

Each direction (client->upstream "up", upstream->client "down") is one
link shared by every connection:

- rate: a token bucket per direction (burst --burst-kib, default 64 KiB).
  A chunk read from a socket reserves its transmission slot on the link
  (a virtual clock: start = max(now - burst, link_free), end = start +
  size/rate) and the reader waits until the slot ends before reading more,
  so a direction never moves more than rate plus the burst, whatever the
  number of connections.
- delay: after its slot, a chunk waits --delay-ms more in a FIFO per
  connection and direction (a delay line: the reader keeps reading while
  earlier chunks are in flight, so throughput is not divided by the delay,
  and order is kept). Opening the upstream connection waits one round
  trip (2 x delay) first, as a TCP handshake would.

Port 0 picks a free port. "listening on HOST:PORT" is printed (and
flushed) once the socket is bound. With --stats FILE, the totals (JSON:
connections, bytes_up, bytes_down, delivered bytes) are written to FILE
(atomically, via a rename) on SIGUSR1 and on exit (SIGTERM, SIGINT).
Python 3.11 standard library only.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time

CHUNK = 64 * 1024
QUEUE_CHUNKS = 256  # per connection and direction: bounds memory


class Link:
    """One direction: a token bucket shared by all connections."""

    def __init__(self, rate_bytes_per_s, burst_bytes):
        self.rate = rate_bytes_per_s
        self.burst_s = burst_bytes / rate_bytes_per_s if rate_bytes_per_s else 0.0
        self.free_at = 0.0
        self.bytes = 0

    def reserve(self, n):
        """Reserves a slot for n bytes; returns when it ends (monotonic)."""
        self.bytes += n
        now = time.monotonic()
        if not self.rate:
            return now
        start = max(now - self.burst_s, self.free_at)
        self.free_at = start + n / self.rate
        return self.free_at


async def sleep_until(t):
    d = t - time.monotonic()
    if d > 0:
        await asyncio.sleep(d)


async def pump(reader, writer, link, delay_s):
    """Copies reader to writer through the link and the delay line."""
    queue = asyncio.Queue(QUEUE_CHUNKS)

    async def read_side():
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                end = link.reserve(len(data))
                await queue.put((end + delay_s, data))
                await sleep_until(end)
        except (ConnectionError, OSError):
            pass
        finally:
            await queue.put((time.monotonic() + delay_s, None))

    async def write_side():
        try:
            while True:
                due, data = await queue.get()
                await sleep_until(due)
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    rt = asyncio.create_task(read_side())
    try:
        await write_side()
    finally:
        rt.cancel()


class Proxy:
    def __init__(self, args):
        self.up_host, self.up_port = split_hostport(args.upstream)
        rate = args.rate_mbit * 1e6 / 8
        burst = args.burst_kib * 1024
        self.links = {"up": Link(rate, burst), "down": Link(rate, burst)}
        self.delay_s = args.delay_ms / 1000.0
        self.connections = 0
        self.active = 0
        self.stats_file = args.stats

    async def handle(self, c_reader, c_writer):
        self.connections += 1
        self.active += 1
        u_writer = None
        try:
            # The TCP handshake costs one round trip on a real link.
            await asyncio.sleep(2 * self.delay_s)
            u_reader, u_writer = await asyncio.wait_for(
                asyncio.open_connection(self.up_host, self.up_port), 10)
            await asyncio.gather(
                pump(c_reader, u_writer, self.links["up"], self.delay_s),
                pump(u_reader, c_writer, self.links["down"], self.delay_s),
            )
        except (ConnectionError, OSError, asyncio.TimeoutError) as e:
            print(f"shaping-proxy: connection error: {e!r}", file=sys.stderr)
        finally:
            self.active -= 1
            for w in (c_writer, u_writer):
                if w is not None:
                    w.close()

    def totals(self):
        return {
            "connections": self.connections,
            "active": self.active,
            "bytes_up": self.links["up"].bytes,
            "bytes_down": self.links["down"].bytes,
        }

    def write_stats(self):
        if not self.stats_file:
            return
        tmp = f"{self.stats_file}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.totals(), f)
            f.write("\n")
        os.replace(tmp, self.stats_file)


def split_hostport(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"shaping-proxy: expected HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="HOST:PORT (port 0: any)")
    p.add_argument("--upstream", required=True, help="HOST:PORT")
    p.add_argument("--delay-ms", type=float, default=10.0,
                   help="one-way delay added in each direction")
    p.add_argument("--rate-mbit", type=float, default=200.0,
                   help="rate limit per direction, Mbit/s (0: unlimited)")
    p.add_argument("--burst-kib", type=float, default=64.0,
                   help="token bucket size per direction")
    p.add_argument("--stats", help="write byte totals here on SIGUSR1/exit")
    args = p.parse_args()

    proxy = Proxy(args)
    host, port = split_hostport(args.listen)
    server = await asyncio.start_server(proxy.handle, host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, proxy.write_stats)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    proxy.write_stats()


if __name__ == "__main__":
    asyncio.run(main())
