#!/usr/bin/env python3
"""Accuracy of the bandwidth limits: 10 MiB at 1 MiB/s through proxyd and through nghttpx.

    python bench/ratelimit_accuracy.py [--size 10MiB] [--rate 1MiB] [--bursts 1MiB,64KiB]
                                       [--modes h2c,h1] [--proxies proxyd,nghttpx]

For every proxy, burst and client mode it times (curl's own ``time_total``) one download of
``--size`` bytes with only the write limit set (proxyd ``rate_limits.write``, nghttpx
``--write-rate/--write-burst``) and one upload of the same size to the demo backend's /echo with
only the read limit set (proxyd ``rate_limits.read``, nghttpx ``--read-rate/--read-burst``), and
prints the time, the effective rate and the error against the token-bucket ideal
``(size - burst) / rate`` (the burst goes out at once). Bodies are checked (download: sha256 of
the demo pattern; upload: the length and sha256 the backend reports).

Expected for proxyd (issue 6): 10 MiB at 1 MiB/s in 9-11 s. The backend is ``demo/backend.py``
(the end-to-end tests' backend) on 127.0.0.1; both proxies listen in cleartext on 127.0.0.1
(h2 by prior knowledge or HTTP/1.1), one process / worker each. Every process started here is
stopped in a ``finally``; every transfer has a deadline (2 x the ideal time + 15 s); a transfer
cut by it is reported with the bytes it moved (``FAILED``) and the run goes on.
"""

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.harness import (HOST, Backend, Proxy, base_config, demo, free_port,  # noqa: E402
                               port_accepts, require_tool, stop_process, wait_until)

MiB = 1024 * 1024
UNITS = {"": 1, "b": 1, "kib": 1024, "mib": MiB, "k": 1024, "m": MiB}


def parse_size(text):
    text = text.strip().lower()
    num = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(float(num) * UNITS[text[len(num):]])


def human(n):
    return f"{n // MiB}MiB" if n % MiB == 0 else f"{n // 1024}KiB"


def curl_transfer(url, mode, deadline, upload=None, out=None):
    """One curl run; returns (http code, time_total, bytes down, bytes up, response headers,
    curl's error or None). A transfer cut by the deadline still reports what it moved."""
    flag = {"h2c": "--http2-prior-knowledge", "h1": "--http1.1"}[mode]
    with tempfile.TemporaryDirectory() as tmp:
        hdr = Path(tmp) / "headers"
        cmd = [require_tool("curl"), "-sS", flag, "-o", str(out or os.devnull), "-D", str(hdr),
               "--max-time", str(int(deadline)),
               "-w", "%{http_code} %{time_total} %{size_download} %{size_upload}"]
        if upload is not None:
            cmd += ["--data-binary", f"@{upload}", "-H", "content-type: application/octet-stream"]
        cmd.append(url)
        proc = subprocess.run(cmd, capture_output=True, timeout=deadline + 10, text=True)
        code, total, down, up = proc.stdout.split()
        headers = {}
        for line in hdr.read_text(errors="replace").splitlines():
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
    error = f"curl exit {proc.returncode}: {proc.stderr.strip()}" if proc.returncode else None
    return int(code), float(total), int(float(down)), int(float(up)), headers, error


class Nghttpx:
    """nghttpx in front of the demo backend, cleartext frontend, one worker."""

    def __init__(self, backend, workdir, extra):
        self.port = free_port()
        self.log = Path(workdir) / "nghttpx.log"
        cmd = [require_tool("nghttpx"), "--conf=/dev/null", "-n1", "--no-ocsp",
               f"-f{HOST},{self.port};no-tls", f"-b{backend.host},{backend.port}",
               f"--errorlog-file={self.log}", "--backend-read-timeout=120s",
               "--frontend-read-timeout=120s", *extra]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_until(lambda: self.proc.poll() is not None or port_accepts(self.port), 15,
                       what="nghttpx to listen")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"nghttpx exited: {self.proc.stderr.read().decode(errors='replace')}"
                               f" {self.log.read_text() if self.log.exists() else ''}")

    def url(self, path):
        return f"http://{HOST}:{self.port}{path}"

    def stop(self):
        stop_process(self.proc, signal.SIGQUIT, timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()


def start_proxy(name, backend, workdir, direction, rate, burst):
    if name == "proxyd":
        key = "write" if direction == "download" else "read"
        limits = {"read": {"rate": 0, "burst": 0}, "write": {"rate": 0, "burst": 0}}
        limits[key] = {"rate": rate, "burst": burst}
        # base_config wants a certificate only for a TLS listener; cleartext here
        cfg = base_config(backend, None, None, tls=False, rate_limits=limits,
                          timeouts={"backend_read": "120s"})
        proxy = Proxy(cfg, workdir)
        return proxy, proxy.url
    opt = "write" if direction == "download" else "read"
    proxy = Nghttpx(backend, workdir, [f"--{opt}-rate={rate}", f"--{opt}-burst={burst}"])
    return proxy, proxy.url


def measure(name, backend, direction, mode, size, rate, burst, upload_path):
    ideal = max(size - burst, 0) / rate
    deadline = 2 * ideal + 15
    with tempfile.TemporaryDirectory() as workdir:
        proxy, url = start_proxy(name, backend, workdir, direction, rate, burst)
        try:
            if direction == "download":
                out = Path(workdir) / "body"
                code, total, down, _, _, error = curl_transfer(url(f"/bytes/{size}"), mode,
                                                               deadline, out=out)
                digest = hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else ""
                moved = down
                ok = code == 200 and down == size and digest == demo.body_sha256(size)
            else:
                code, total, _, up, headers, error = curl_transfer(url("/echo"), mode, deadline,
                                                                   upload=upload_path)
                moved = up
                ok = (code == 200 and up == size
                      and headers.get("x-request-body-length") == str(size)
                      and headers.get("x-request-body-sha256") == demo.body_sha256(size))
        finally:
            proxy.stop()
    return {"proxy": name, "direction": direction, "mode": mode, "size": size, "rate": rate,
            "burst": burst, "seconds": round(total, 3), "ideal_seconds": round(ideal, 3),
            "error_pct": round(100 * (total - ideal) / ideal, 1) if ideal else None,
            "moved": moved, "effective_MiB_per_s": round(moved / total / MiB, 3),
            "ok": ok and error is None, "error": error}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="10MiB")
    ap.add_argument("--rate", default="1MiB")
    ap.add_argument("--bursts", default="1MiB", help="comma-separated burst sizes")
    ap.add_argument("--modes", default="h2c,h1", help="h2c and/or h1")
    ap.add_argument("--proxies", default="proxyd,nghttpx")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    size, rate = parse_size(args.size), parse_size(args.rate)
    bursts = [parse_size(b) for b in args.bursts.split(",")]
    modes = args.modes.split(",")
    proxies = args.proxies.split(",")
    for tool in ("curl", "nghttpx") if "nghttpx" in proxies else ("curl",):
        require_tool(tool)
    backend = Backend()
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            upload = Path(tmp) / "upload.bin"
            with open(upload, "wb") as f:
                for chunk in demo.iter_body(size):
                    f.write(chunk)
            print(f"{human(size)} at {human(rate)}/s through each proxy (demo backend "
                  f"{backend.address}); ideal = (size - burst) / rate", flush=True)
            print(f"{'proxy':8} {'direction':9} {'mode':4} {'burst':7} {'seconds':>8} "
                  f"{'ideal':>7} {'error':>7} {'MiB/s':>7}  check", flush=True)
            for burst in bursts:
                for direction in ("download", "upload"):
                    for mode in modes:
                        for name in proxies:  # interleaved: proxyd, nghttpx, proxyd, ...
                            r = measure(name, backend, direction, mode, size, rate, burst,
                                        upload)
                            results.append(r)
                            err = "" if r["error_pct"] is None else f"{r['error_pct']:+.1f}%"
                            print(f"{name:8} {direction:9} {mode:4} {human(burst):7} "
                                  f"{r['seconds']:8.2f} {r['ideal_seconds']:7.2f} {err:>7} "
                                  f"{r['effective_MiB_per_s']:7.3f}  "
                                  f"{'ok' if r['ok'] else 'FAILED'}"
                                  f"{'' if r['error'] is None else ' (' + r['error'] + ')'}",
                                  flush=True)
    finally:
        backend.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
