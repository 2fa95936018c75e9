"""The layering rule of DESIGN.md §2: only proxyd/net, service.py and tap.py may touch the network.

In a fresh interpreter, every other module of proxyd is imported (found with
``pkgutil.walk_packages``, so new modules are covered without editing this test; modules in
directories without ``__init__.py`` are found on disk too), and afterwards neither
``twisted.internet`` nor ``socket`` may be in ``sys.modules``.
"""

import json
import os
import subprocess
import sys

import proxyd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(proxyd.__file__)))

SCRIPT = r"""
import importlib, json, os, pkgutil, sys

import proxyd

EXCLUDED_PACKAGES = ("proxyd.net",)
EXCLUDED_MODULES = ("proxyd.service", "proxyd.tap")


def excluded(name):
    return name in EXCLUDED_MODULES or any(
        name == p or name.startswith(p + ".") for p in EXCLUDED_PACKAGES)


names = set()
for info in pkgutil.walk_packages(proxyd.__path__, "proxyd.", onerror=lambda name: None):
    names.add(info.name)
# Directories without __init__.py (namespace packages) are skipped by walk_packages: add their
# modules from the file system so a half-finished package cannot hide an import.
base = os.path.dirname(proxyd.__file__)
for folder, dirs, files in os.walk(base):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    rel = os.path.relpath(folder, base)
    prefix = "proxyd" if rel == "." else "proxyd." + rel.replace(os.sep, ".")
    for file in files:
        if file.endswith(".py"):
            stem = file[:-3]
            names.add(prefix if stem == "__init__" else prefix + "." + stem)

checked = []
for name in sorted(names):
    if excluded(name):
        continue
    importlib.import_module(name)
    checked.append(name)

print(json.dumps({
    "checked": checked,
    "twisted.internet": sorted(m for m in sys.modules
                               if m == "twisted.internet" or m.startswith("twisted.internet.")),
    "socket": "socket" in sys.modules,
}))
"""


def run_probe():
    """Run the import probe in a fresh interpreter; return its JSON report."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_pure_modules_do_not_import_the_network():
    """Importing every module outside proxyd/net, service.py and tap.py leaves out twisted.internet and socket."""
    report = run_probe()
    # The walk really found the pure core (guards against an empty, trivially passing walk).
    for name in ("proxyd.events", "proxyd.pool", "proxyd.bridge", "proxyd.codec.h1", "proxyd.codec.h2",
                 "proxyd.headers", "proxyd.config"):
        assert name in report["checked"]
    assert not any(name.startswith("proxyd.net") for name in report["checked"])
    assert "proxyd.service" not in report["checked"] and "proxyd.tap" not in report["checked"]
    assert report["twisted.internet"] == [], report["twisted.internet"]
    assert report["socket"] is False


def test_probe_detects_a_network_import():
    """The probe itself works: importing proxyd.net.frontend does pull in twisted.internet."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import sys, proxyd.net.frontend; "
            "print('twisted.internet' in sys.modules, 'socket' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]
