"""Build hook: the optional native accelerator of the memory:// fast path.

Everything else is configured in pyproject.toml. ``optional=True``: where the C extension cannot be
built (no compiler, no Python headers, a free-threaded build), the install still succeeds and interlock
uses its pure-Python twin of the same code (see ``interlock.backends.memory.accelerated()``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "interlock._speedups",
            sources=["src/interlock/_speedups.c"],
            optional=True,
        )
    ]
)
