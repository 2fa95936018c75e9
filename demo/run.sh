#!/usr/bin/env bash
# One command from a fresh clone: install proxyd, make a self-signed certificate for the demo,
# start the bundled demo HTTP/1.1 app on 127.0.0.1:8081 and run proxyd in the foreground on the
# shipped conf/proxy.yaml (TLS on 127.0.0.1:8443, cleartext on 127.0.0.1:8080). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check .

if [ ! -f conf/demo-cert.pem ] || [ ! -f conf/demo-key.pem ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout conf/demo-key.pem -out conf/demo-cert.pem 2>/dev/null
    echo "demo: made a self-signed certificate in conf/demo-cert.pem"
fi

python3 demo/backend.py --port 8081 >/dev/null &
backend=$!
trap 'kill $backend 2>/dev/null || true' EXIT INT TERM

echo "demo: try  curl --http2 -k https://127.0.0.1:8443/   or   curl --http2-prior-knowledge http://127.0.0.1:8080/"
cd /tmp
twistd --nodaemon --pidfile= proxyd -c "$OLDPWD/conf/proxy.yaml"
