"""End-to-end tests: the real daemon, real clients (curl, nghttp, h2load), the demo backend."""
