"""Build hook: the optional native accelerators (the memory:// fast path, and the file:// backend's
hot state transitions).

Everything else is configured in pyproject.toml. ``optional=True``: where a C extension cannot be
built (no compiler, no Python headers, a free-threaded build), the install still succeeds and interlock
uses the pure-Python twin of the same code (see ``interlock.backends.memory.accelerated()`` and
``interlock.backends.file.accelerated()``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "interlock._speedups",
            sources=["src/interlock/_speedups.c"],
            optional=True,
        ),
        Extension(
            "interlock.backends.file._fastfile",
            sources=["src/interlock/backends/file/_fastfile.c"],
            optional=True,
        ),
    ]
)
