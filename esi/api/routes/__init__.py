"""The API's routes, declared once in a table (`table`), grouped by concern: sending and reading requests
(`requests`), dead letters (`dead_letters`), the systems with their pauses and the audit log (`systems`), the
contract documents (`contracts`), health and metrics (`health`). The send routes are the systems' own (data on
each `System`, `esi.systems.spec.SendRoute`)."""

from esi.api.routes.table import Param, Route
from esi.systems.spec import SendRoute

__all__ = ["Param", "Route", "SendRoute"]
