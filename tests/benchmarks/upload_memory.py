"""How much an upload raises the API process's memory: prints peak RSS growth for one large file.

    uv run python -m tests.benchmarks.upload_memory --size-mb 1024

Starts `assay migrate` and `assay api` (embedded settings) in a temporary folder, streams a
generated CSV of the given size with httpx, and samples the API's RSS every 50 ms.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from tests.e2e.conftest import free_port

CHUNK = 1024 * 1024


def generated_csv(size: int) -> Iterator[bytes]:
    row = b"12345.678,abcdefgh,2026-01-01T00:00:00,42\n"
    block = b"a,b,c,d\n" + row * (CHUNK // len(row))
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece


def multipart(size: int, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode()
    yield from generated_csv(size)
    yield f"\r\n--{boundary}--\r\n".encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--s3", action="store_true", help="store in an S3 endpoint (moto server)")
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
        env["ASSAY_AUTH_REQUIRED"] = "false"  # it measures the upload path, not the keys
        env |= {
            "ASSAY_DATA_DIR": str(Path(folder) / ".assay"),
            "ASSAY_MAX_UPLOAD_BYTES": str(size * 2),
        }
        if args.s3:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per part

            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            moto.start()
            host, moto_port = moto.get_host_and_port()
            env |= {
                "ASSAY_STORAGE_BACKEND": "s3",
                "ASSAY_S3_ENDPOINT_URL": f"http://{host}:{moto_port}",
                "ASSAY_S3_ACCESS_KEY_ID": "bench",
                "ASSAY_S3_SECRET_ACCESS_KEY": "bench",
            }
        subprocess.run([sys.executable, "-m", "main", "migrate"], env=env, check=True, cwd=folder)
        port = free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "main", "api", "--port", str(port)],
            env=env,
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            while True:
                try:
                    if httpx.get(f"{base}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            process = psutil.Process(api.pid)
            baseline = process.memory_info().rss
            peak = baseline
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, process.memory_info().rss)
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            boundary = "assay-benchmark-boundary"
            started = time.monotonic()
            response = httpx.post(
                f"{base}/api/v1/datasets",
                content=multipart(size, boundary),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                timeout=600,
            )
            took = time.monotonic() - started
            done.set()
            sampler.join()
            assert response.status_code == 201, response.text
            mib = 1024 * 1024
            print(f"uploaded {size / mib:.0f} MiB in {took:.1f} s ({size / mib / took:.0f} MiB/s)")
            print(
                f"API RSS before {baseline / mib:.0f} MiB, peak {peak / mib:.0f} MiB, "
                f"growth {(peak - baseline) / mib:.1f} MiB"
            )
        finally:
            api.terminate()
            api.wait()


if __name__ == "__main__":
    main()
