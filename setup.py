"""Build shim: all metadata lives in setup.cfg; this only adds the optional C part.

meshvpn/onion/_cgodirection.c is CGO relay crypto's per-direction state over
OpenSSL (re-keyed in place, one call per cell); it needs a C compiler and
OpenSSL's headers (bin/install installs them).  It is optional: when it cannot be
built, meshvpn/onion/cgo.py runs the same construction in Python, slower.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "meshvpn.onion._cgodirection",
            sources=["meshvpn/onion/_cgodirection.c"],
            libraries=["crypto"],
            optional=True,
        ),
    ],
)
