"""A small keep-alive HTTP/1.1 load generator (asyncio, raw sockets): C connections each send
requests back to back for D seconds; reports requests/s and latency percentiles. Run in its
own process so the server under test has the other core."""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def _worker(host: str, port: int, request: bytes, until: float, lat: list[float],
                  codes: dict[int, int]) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            lat.append((time.perf_counter() - t0) * 1000)
            code = int(status_line.split()[1])
            codes[code] = codes.get(code, 0) + 1
    finally:
        writer.close()


async def run(host: str, port: int, path: str, body: bytes, connections: int, seconds: float):
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    lat: list[float] = []
    codes: dict[int, int] = {}
    start = time.monotonic()
    until = start + seconds
    await asyncio.gather(*(_worker(host, port, request, until, lat, codes)
                           for _ in range(connections)))  # fmt: skip
    elapsed = time.monotonic() - start
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, max(0, int(p / 100 * len(lat) + 0.5) - 1))], 3)

    return {"requests": len(lat), "seconds": round(elapsed, 3),
            "req_per_s": round(len(lat) / elapsed, 1), "p50_ms": pct(50), "p95_ms": pct(95),
            "p99_ms": pct(99), "max_ms": round(lat[-1], 3), "status_codes": codes}  # fmt: skip


if __name__ == "__main__":
    host, port, path, body, conns, secs = sys.argv[1:7]
    result = asyncio.run(run(host, int(port), path, body.encode(), int(conns), float(secs)))
    print(json.dumps(result))
