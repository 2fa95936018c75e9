"""Cost of translating one request's header fields (bridge.backend_request), this tree vs a git ref.

Strategy: the per-request entry point of the header rules, ``proxyd.bridge.backend_request``, is
timed with the default header policy on the working tree and on ``--against`` (default ``main``;
its ``proxyd/headers.py`` and ``proxyd/bridge.py`` are read with ``git show`` into a temp
directory), interleaved round by round so that load from other processes hits both alike; the
median of the per-round ratios is printed for an h2load-like and a browser-like request, over
HTTP/2 and HTTP/1.1. Both sides must produce the same fields. Run from anywhere:

    python bench/translate.py                 # this tree vs main
    python bench/translate.py --against HEAD~3 --rounds 60
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import timeit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from proxyd import bridge  # noqa: E402
from proxyd import events as ev  # noqa: E402
from proxyd.config import HeaderPolicy  # noqa: E402
from tests.support import gated  # noqa: E402

REQUESTS = {
    "h2load-like": [(b"user-agent", b"h2load nghttp2/1.52.0"), (b"accept", b"*/*")],
    "browser-like": [
        (b"user-agent", b"Mozilla/5.0"), (b"accept", b"*/*"),
        (b"accept-encoding", b"gzip, deflate, br"), (b"accept-language", b"en-US,en;q=0.9"),
        (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"referer", b"https://example.com/"),
        (b"sec-fetch-mode", b"navigate"), (b"x-forwarded-for", b"10.0.0.1")],
}


def load_reference(ref, directory):
    """The bridge module of ``ref``, importing that ref's headers module (not this tree's)."""
    for name in ("headers", "bridge"):
        text = subprocess.run(["git", "-C", REPO, "show", f"{ref}:proxyd/{name}.py"],
                              check=True, capture_output=True, text=True).stdout
        text = text.replace("from proxyd.headers import", "from reference_headers import")
        with open(os.path.join(directory, f"reference_{name}.py"), "w") as stream:
            stream.write(text)
    sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(
        "reference_bridge", os.path.join(directory, "reference_bridge.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def request(fields, version):
    """A gated request with ``fields`` from an HTTP/2 or HTTP/1.1 client."""
    if version == b"2":
        head = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"),
                (b":path", b"/index.html"), *fields]
    else:
        head = [(b":method", b"GET"), (b":path", b"/index.html"), (b"host", b"example.com"),
                *fields]
    return gated(ev.RequestReceived(stream_id=1, headers=head, end_stream=True,
                                    http_version=version))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="main", help="git ref to compare with")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        reference = load_reference(args.against, directory)
        ours = bridge.Policy(headers=HeaderPolicy(), tls=True)
        theirs = reference.Policy(headers=HeaderPolicy(), tls=True)
        for label, fields in REQUESTS.items():
            for version in (b"2", b"1.1"):
                req = request(fields, version)

                def old():
                    return reference.backend_request(req, client_ip=b"127.0.0.1", policy=theirs)

                def new():
                    return bridge.backend_request(req, client_ip=b"127.0.0.1", policy=ours)

                assert old().headers == new().headers, (old().headers, new().headers)
                ratios, before, after = [], [], []
                for _ in range(args.rounds):
                    a = min(timeit.repeat(old, number=3000, repeat=3)) / 3000 * 1e9
                    b = min(timeit.repeat(new, number=3000, repeat=3)) / 3000 * 1e9
                    before.append(a)
                    after.append(b)
                    ratios.append(b / a)
                print(f"{label:13s} HTTP/{version.decode():3s} {args.against} "
                      f"{statistics.median(before):6.0f} ns   this tree "
                      f"{statistics.median(after):6.0f} ns   ratio "
                      f"{statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
