"""Benchmark: the web server's peak memory (VmHWM) for /api/search bodies of 16 and 64 blank 4096x4096 masks.

Issue 10, item 3: before mask PNG headers were checked, 16 such masks (a blank one compresses to about 16-22 kB)
drove the server from 0.37 GB to 1.4 GB and 64 to 4.7 GB, only to answer 400. This starts `model-rewrite serve`
on the default model, sends both bodies and reads the server's peak resident memory from /proc. Linux only.

    .venv/bin/python benchmarks/bench_mask_memory.py      # writes benchmarks/results/mask_memory.json
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mask_memory.json"
PORT = 8799


def blank_mask_url(side: int = 4096) -> str:
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def memory_mb(pid: int) -> tuple[float, float]:
    """(peak, current) resident memory of process `pid` in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return tuple(int(re.search(rf"{k}:\s+(\d+)", status).group(1)) / 1024 for k in ("VmHWM", "VmRSS"))  # type: ignore[return-value]


def main() -> dict:
    url = blank_mask_url()
    base = f"http://127.0.0.1:{PORT}"
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "model-rewrite"), "serve", "--port", str(PORT),
                                 "--cache-dir", cache], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(120):
                try:
                    if httpx.get(f"{base}/api/info", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(1)
            out: dict = {"mask_png_bytes": len(base64.b64decode(url.split(",", 1)[1])),
                         "idle_peak_mb": round(memory_mb(proc.pid)[0])}
            for n in (16, 64):
                body = {"layer": "b32", "context": [{"seed": i, "mask": url} for i in range(n)], "seeds": "0-15"}
                t0 = time.perf_counter()
                r = httpx.post(f"{base}/api/search", json=body, timeout=120)
                peak, rss = memory_mb(proc.pid)
                out[f"{n}_masks"] = {"status": r.status_code, "seconds": round(time.perf_counter() - t0, 3),
                                     "answer": r.json().get("detail", ""), "peak_mb": round(peak), "rss_after_mb": round(rss)}
        finally:
            proc.terminate()
            proc.wait(30)
    OUT.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
