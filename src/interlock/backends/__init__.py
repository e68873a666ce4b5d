"""Backends, one module each, imported lazily by URL scheme (see ``interlock._registry``)."""
