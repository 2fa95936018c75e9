"""twistd plugin: ``twistd proxyd -c proxy.yaml`` runs :mod:`proxyd.tap`."""

from twisted.application.service import ServiceMaker

proxyd = ServiceMaker(
    "proxyd",
    "proxyd.tap",
    "Reverse proxy: HTTP/2, SPDY and HTTP/1.1 clients to HTTP/1.1 or HTTP/2 backends",
    "proxyd",
)
