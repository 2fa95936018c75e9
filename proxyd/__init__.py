"""proxyd: a reverse proxy daemon translating HTTP/2, SPDY and HTTP/1.1 clients to HTTP/1.1 backends.

Strategy: sans-IO codecs and policy modules under this package turn bytes into neutral events
(:mod:`proxyd.events`); only :mod:`proxyd.net`, :mod:`proxyd.service` and :mod:`proxyd.tap` touch
Twisted's reactor.
"""

__version__ = "0.1.0"
