#!/usr/bin/env bash
# One command from a fresh clone: make a virtual environment (.venv/) with proxyd installed in
# it, make a self-signed certificate for the demo, start the bundled demo HTTP/1.1 app on
# 127.0.0.1:8081 and run proxyd in the foreground on the shipped conf/proxy.yaml (TLS on
# 127.0.0.1:8443, cleartext on 127.0.0.1:8080). Ctrl-C stops both.
#
# The venv is needed because Debian's (and Ubuntu's) system Python refuses `pip install`
# (PEP 668, "externally managed"); Debian needs the python3-venv package for it. Re-runs reuse
# .venv/ and only reinstall proxyd. Other ports (e.g. when 8080 is taken):
#   PROXYD_DEMO_TLS_PORT=9443 PROXYD_DEMO_PORT=9080 PROXYD_DEMO_BACKEND_PORT=9081 bash demo/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
tls_port=${PROXYD_DEMO_TLS_PORT:-8443}
port=${PROXYD_DEMO_PORT:-8080}
backend_port=${PROXYD_DEMO_BACKEND_PORT:-8081}

if [ ! -x .venv/bin/python ]; then
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        echo "demo: $python cannot make a virtual environment; on Debian/Ubuntu:" \
             "sudo apt install python3-venv" >&2
        exit 1
    fi
    echo "demo: making a virtual environment in .venv/ (once)"
    "$python" -m venv .venv
fi
echo "demo: installing proxyd into .venv/"
.venv/bin/python -m pip install -q --disable-pip-version-check .

if [ ! -f conf/demo-cert.pem ] || [ ! -f conf/demo-key.pem ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout conf/demo-key.pem -out conf/demo-cert.pem 2>/dev/null
    echo "demo: made a self-signed certificate in conf/demo-cert.pem"
fi

config=conf/proxy.yaml
if [ "$tls_port/$port/$backend_port" != "8443/8080/8081" ]; then
    config=conf/demo-ports.yaml
    sed -e "s/tcp:8443:/tcp:$tls_port:/" -e "s/tcp:8080:/tcp:$port:/" \
        -e "s/127.0.0.1:8081/127.0.0.1:$backend_port/" conf/proxy.yaml > "$config"
fi

.venv/bin/python demo/backend.py --port "$backend_port" >/dev/null &
backend=$!
trap 'kill $backend 2>/dev/null || true' EXIT INT TERM

echo "demo: try  curl --http2 -k https://127.0.0.1:$tls_port/   or" \
     "curl --http2-prior-knowledge http://127.0.0.1:$port/"
cd /tmp
"$OLDPWD/.venv/bin/twistd" --nodaemon --pidfile= proxyd -c "$OLDPWD/$config"
