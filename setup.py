"""Packaging of proxyd: the package, its twistd plugin and its runtime dependencies."""

from setuptools import setup

setup(
    name="proxyd",
    version="0.1.0",
    description="Reverse proxy daemon: HTTP/2, SPDY and HTTP/1.1 clients to HTTP/1.1 or HTTP/2 backends",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["proxyd", "proxyd.codec", "proxyd.codec.spdy", "proxyd.net", "twisted.plugins"],
    package_data={"twisted.plugins": ["proxyd_plugin.py"]},
    install_requires=[
        "Twisted[tls]>=23.10",
        "pyOpenSSL>=23.2",
        "service-identity>=23.1",
        "h2>=4.1,<5",
        "h11>=0.14,<1",
        "PyYAML>=6.0",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2.1", "hypothesis>=6"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: Proxy Servers",
    ],
)
