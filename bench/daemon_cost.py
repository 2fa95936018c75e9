#!/usr/bin/env python3
"""What one request costs the real daemon, counted instead of timed.

Strategy: timings on a shared 2-core VM move by 30% from one run to the next, so a change of a
few percent cannot be seen in ``bench/run.py``'s figures. Counts can: the daemon (``python -m
twisted proxyd``, TLS, sockets, nginx behind it, h2load in front, as in ``bench/run.py``) serves
N1 and then, in a second daemon, N2 requests of one scenario, and the difference of the two
totals divided by N2 - N1 is the cost of one request without start-up and shutdown. Two
counters:

``opcodes`` (default; pure Python, a few seconds)
    The daemon runs under ``sys.settrace`` with opcode events: Python bytecodes executed and
    Python function calls, per function and per module. Deterministic for a given tree and
    load; it sees nothing of C (TLS, copies, the interpreter's own overhead per opcode).
``instructions`` (``valgrind --tool=callgrind``, about a minute for S1)
    Machine instructions per request, by shared object and by C function: what the opcodes
    miss (OpenSSL, memcpy, allocation). Note that valgrind counts each iteration of a ``rep
    movsb`` copy, so large copies weigh more here than in time.

Batching differs from a full-speed run (a slower daemon finds more requests per read), so compare
trees with the same counter, not counts with timings::

    python bench/daemon_cost.py --scenario S1                 # opcodes, S1 shape
    python bench/daemon_cost.py --scenario B3 --counter instructions --top 20
    python bench/daemon_cost.py --tree /path/to/other/checkout   # the same load on another tree

Scenarios (h2load over TLS, h2, as in ``bench/run.py``): S1 100 B ``-c10 -m10``, S2 4 KiB, S3
1 MiB ``-c4 -m1`` (default mode, HTTP/1.1 to nginx); B1 and B3 the same in bridge mode (HTTP/2
over TLS to nginx). Needs nginx, h2load, openssl (and valgrind for ``instructions``); 127.0.0.1
only; every process is stopped in a ``finally`` block and every wait has a deadline.
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import run as bench  # bench/run.py: nginx, certificates, proxyd's configuration, Proc

#: scenario -> (mode, path, h2load options, N1, N2)
SCENARIOS = {
    "S1": ("default", "/100b", ["-c10", "-m10"], 1000, 5000),
    "S2": ("default", "/4k", ["-c10", "-m10"], 1000, 5000),
    "S3": ("default", "/1m", ["-c4", "-m1"], 20, 80),
    "B1": ("bridge", "/100b", ["-c10", "-m10"], 1000, 5000),
    "B3": ("bridge", "/1m", ["-c4", "-m1"], 20, 80),
}

#: Runs ``twisted`` under an opcode counter; the counts go to the JSON file named by
#: PROXYD_OPCOUNT_OUT when the daemon exits.
_TRACER = r"""
import atexit, collections, json, os, runpy, sys
counts = collections.Counter()
names = {}
def tracer(frame, event, arg):
    code = frame.f_code
    key = names.get(code)
    if key is None:
        key = names[code] = "%s:%s" % (code.co_filename, code.co_qualname)
    counts["call " + key] += 1
    frame.f_trace_opcodes = True
    frame.f_trace_lines = False
    def local(frame, event, arg):
        if event == "opcode":
            counts[key] += 1
        return local
    return local
atexit.register(lambda: json.dump(counts, open(os.environ["PROXYD_OPCOUNT_OUT"], "w")))
sys.settrace(tracer)
sys.argv[0] = "twisted"
runpy.run_module("twisted", run_name="__main__", alter_sys=True)
"""


def _short(path, tree):
    """A file name without the directories that only say where it is installed."""
    for cut in (tree.rstrip("/") + "/", "site-packages/", "lib/python%d.%d/" % sys.version_info[:2]):
        if cut in path:
            return path.split(cut, 1)[1]
    return path


def serve(tmp, tree, scenario, n, counter, conf_args):
    """Start the daemon of ``tree`` under ``counter``, send it ``n`` requests, stop it; return
    what it counted (a dict)."""
    mode, path, options = SCENARIOS[scenario][:3]
    port = bench.free_port()
    conf = os.path.join(tmp, "proxyd-%s-%d.yaml" % (scenario, n))
    with open(conf, "w") as f:
        f.write(bench.proxyd_yaml(port, *conf_args[mode], mode=mode, ca=conf_args["ca"]))
    log = os.path.join(tmp, "proxyd-%d.log" % n)
    daemon = ["--log-format=text", "--log-file=" + log, "proxyd", "-c", conf]
    env = dict(os.environ, PYTHONPATH=tree, PYTHONHASHSEED="0")
    out = os.path.join(tmp, "count-%d" % n)
    if counter == "opcodes":
        tracer = os.path.join(tmp, "opcount.py")
        with open(tracer, "w") as f:
            f.write(_TRACER)
        env["PROXYD_OPCOUNT_OUT"] = out
        argv = [sys.executable, tracer] + daemon
    else:
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                sys.executable, "-m", "twisted"] + daemon
    proc = bench.Proc("proxyd", argv, os.path.join(tmp, "proxyd-%d.out" % n), cwd=tree, env=env)
    try:
        bench.wait_for_port(port, proc, timeout=300, name="proxyd", log=log)
        url = "https://127.0.0.1:%d%s" % (port, path)
        result = bench.run_checked(["h2load", "-n", str(n)] + options + [url], timeout=900)
        if not re.search(r"\b%d succeeded" % n, result.stdout):
            raise bench.BenchError("h2load: not all %d requests succeeded:\n%s" % (n, result.stdout))
    finally:
        proc.stop(timeout=120)
    if counter == "opcodes":
        with open(out) as f:
            return json.load(f)
    return _callgrind_functions(out)


def _callgrind_functions(path):
    """{``function [object]``: instructions} of a callgrind output file (self cost)."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                          capture_output=True, text=True, check=True, timeout=300).stdout
    counts = {}
    for line in text.splitlines():
        found = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*)$", line)
        if found and "PROGRAM TOTALS" not in line:
            counts[found.group(2)] = int(found.group(1).replace(",", ""))
    return counts


def per_request(first, second, n):
    """``second - first`` for every key, divided by ``n`` requests."""
    return {key: (second.get(key, 0) - first.get(key, 0)) / n for key in set(first) | set(second)}


def report_opcodes(cost, tree, top):
    """Print opcodes and calls per request: the total, by module, the ``top`` functions."""
    calls = {k[5:]: v for k, v in cost.items() if k.startswith("call ")}
    ops = {k: v for k, v in cost.items() if not k.startswith("call ")}
    total = sum(ops.values())
    print("%.0f opcodes and %.0f Python calls per request" % (total, sum(calls.values())))
    modules = collections.Counter()
    for key, value in ops.items():
        modules[_short(key.rsplit(":", 1)[0], tree)] += value
    print("\nby module:")
    for name, value in modules.most_common(top):
        print("%8.1f %5.1f%%  %s" % (value, 100 * value / total, name))
    print("\nby function (opcodes, calls):")
    for key, value in sorted(ops.items(), key=lambda kv: -kv[1])[:top]:
        name = "%s:%s" % (_short(key.rsplit(":", 1)[0], tree), key.rsplit(":", 1)[1])
        print("%8.1f %5.2f  %s" % (value, calls.get(key, 0), name))


def report_instructions(cost, top):
    """Print machine instructions per request: the total, by object, the ``top`` functions."""
    total = sum(cost.values())
    print("%.0f instructions per request" % total)
    objects = collections.Counter()
    for key, value in cost.items():
        found = re.search(r"\[(.*?)\]$", key)
        objects[os.path.basename(found.group(1)) if found else "?"] += value
    print("\nby object:")
    for name, value in objects.most_common(top):
        print("%10.0f %5.1f%%  %s" % (value, 100 * value / total, name))
    print("\nby function:")
    for key, value in sorted(cost.items(), key=lambda kv: -kv[1])[:top]:
        print("%10.0f %5.1f%%  %s" % (value, 100 * value / total,
                                      re.sub(r"^.*?:(?=[^:/]+ \[)", "", key)[-120:]))


def main(argv=None):
    """Parse arguments, run both loads, print the difference per request."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="S1", choices=sorted(SCENARIOS))
    ap.add_argument("--counter", default="opcodes", choices=("opcodes", "instructions"))
    ap.add_argument("--tree", default=bench.REPO_ROOT, help="the proxyd checkout to run")
    ap.add_argument("--top", type=int, default=30, help="rows of each table")
    ap.add_argument("--json", help="also write the per-request counts to this file")
    args = ap.parse_args(argv)
    need = ["nginx", "h2load", "openssl"] + (
        ["valgrind", "callgrind_annotate"] if args.counter == "instructions" else [])
    missing = [tool for tool in need if shutil.which(tool) is None]
    if missing:
        print("daemon_cost: missing %s" % ", ".join(missing), file=sys.stderr)
        return 1
    tree = os.path.abspath(args.tree)
    n1, n2 = SCENARIOS[args.scenario][3:]
    tmp = tempfile.mkdtemp(prefix="proxyd-cost-")
    nginx = None
    try:
        cert, key = bench.make_cert(tmp)
        ca, h2_cert, h2_key = bench.make_backend_pki(tmp)
        www = os.path.join(tmp, "www")
        bench.make_files(www)
        nginx, port, h2_port = bench.start_nginx(tmp, www, h2_cert, h2_key)
        conf_args = {"default": (port, cert, key), "bridge": (h2_port, cert, key), "ca": ca}
        first = serve(tmp, tree, args.scenario, n1, args.counter, conf_args)
        second = serve(tmp, tree, args.scenario, n2, args.counter, conf_args)
    except bench.BenchError as exc:
        print("daemon_cost: %s" % exc, file=sys.stderr)
        return 1
    finally:
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    cost = per_request(first, second, n2 - n1)
    print("%s, %s, tree %s (%d and %d requests)\n" % (args.scenario, args.counter, tree, n1, n2))
    if args.counter == "opcodes":
        report_opcodes(cost, tree, args.top)
    else:
        report_instructions(cost, args.top)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(cost, f, indent=0, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
