"""Assembling and running the services: the composition root (`root`), the services it builds (`services`), and
the HTTP servers they run in the process's own event loop (`http`)."""

from esi.runtime.root import registry_from, run, settle_heap, topology_from
from esi.runtime.services import SettingsError

__all__ = ["SettingsError", "registry_from", "run", "settle_heap", "topology_from"]
