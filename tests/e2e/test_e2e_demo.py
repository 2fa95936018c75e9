"""The README's demo command in a fresh clone with the distribution's own python3.

Strategy: ``git clone`` the repository into a temp directory and run ``bash demo/run.sh`` there
with PATH reduced to /usr/bin:/bin, so ``python3`` is Debian's stock interpreter (externally
managed: ``pip install`` outside a venv is refused) and the script must make its own virtual
environment. The demo's ports are moved to free ones (PROXYD_DEMO_* variables, documented in the
script); then curl talks h2 over TLS and h2c through it, and the whole process group is stopped.
Installing into the venv downloads proxyd's dependencies, hence the long (bounded) start.
"""

import os
import signal
import subprocess

import pytest

from .harness import REPO, curl, free_port, require_tool, run, stop_process, wait_until

STOCK_PYTHON = "/usr/bin/python3"


def test_demo_runs_in_a_fresh_clone_with_stock_python3(tmp_path):
    """``bash demo/run.sh`` in a fresh clone makes .venv/ with Debian's python3, installs proxyd
    there and serves the demo: h2 over TLS and h2c answer 200 through it."""
    if not os.access(STOCK_PYTHON, os.X_OK):
        pytest.fail(f"{STOCK_PYTHON} is required (apt install python3 python3-venv)",
                    pytrace=False)
    rc, out, err = run([STOCK_PYTHON, "-c", "import ensurepip, venv"], timeout=30)
    assert rc == 0, f"{STOCK_PYTHON} cannot make a venv (apt install python3-venv): {err}"
    clone = tmp_path / "clone"
    rc, out, err = run([require_tool("git"), "clone", "--quiet", str(REPO), str(clone)],
                       timeout=120)
    assert rc == 0, err
    tls_port, port, backend_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH="/usr/bin:/bin", PROXYD_DEMO_TLS_PORT=str(tls_port),
               PROXYD_DEMO_PORT=str(port), PROXYD_DEMO_BACKEND_PORT=str(backend_port))
    log = tmp_path / "demo.out"
    with open(log, "wb") as out_file:
        demo = subprocess.Popen(["bash", "demo/run.sh"], cwd=clone, env=env, stdout=out_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_until(lambda: demo.poll() is not None or
                   log.read_text(errors="replace").count("proxyd listening on") >= 2, 600,
                   interval=0.5, what="the demo to install and listen")
        output = log.read_text(errors="replace")
        assert demo.poll() is None, output
        assert f"{clone}/.venv/bin/python 3" in output, output
        tls = curl(f"https://127.0.0.1:{tls_port}/", mode="h2", tmpdir=tmp_path / "a")
        clear = curl(f"http://127.0.0.1:{port}/", mode="h2c", tmpdir=tmp_path / "b")
        assert (tls.status, tls.version, clear.status, clear.version) == (200, "2", 200, "2")
        assert b"proxyd demo backend" in tls.body
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGTERM)
        stop_process(demo, timeout=20)
    assert (clone / ".venv" / "bin" / "twistd").exists()
