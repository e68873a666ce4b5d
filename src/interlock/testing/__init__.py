"""Test infrastructure for interlock and for code that uses it.

Nothing is imported here on purpose: import the submodule you need.

- :mod:`interlock.testing.servers` -- real ``redis-server`` / Valkey / Redis Cluster /
  PostgreSQL processes on free loopback ports in temporary directories, stopped by PID.
- :mod:`interlock.testing.proxy` -- :class:`~interlock.testing.proxy.FaultProxy`, a loopback
  TCP proxy that can black-hole, freeze, delay or reset the connections through it.
- :mod:`interlock.testing.history` -- a history recorder (thread- and process-safe) and a
  checker for exclusion, fencing-token order, read/write exclusion, FIFO order and liveness.
- :mod:`interlock.testing.fenced` -- :class:`~interlock.testing.fenced.FencedStore`, a resource
  that rejects writes carrying a stale fencing token, in-process or over loopback TCP.
- :mod:`interlock.testing.pytest_plugin` -- the ``interlock_url`` fixture: your tests run once per
  backend (``pytest_plugins = ["interlock.testing.pytest_plugin"]`` in a conftest.py).
- ``servers.ServerClock`` -- step a server process's wall clock (libfaketime) in fault tests.

The modules depend on the standard library only (``servers`` may use the ``cryptography``
package when the ``openssl`` command is missing); only ``pytest_plugin`` needs pytest.
"""
