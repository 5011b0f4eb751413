"""The API's routes, declared once in a table (`table`), grouped by concern: sending and reading requests
(`requests`), dead letters (`dead_letters`), health and metrics (`ops`). Send routes are data (`send`)."""

from esi.api.routes.send import ORIGINAL_SEND_ROUTES, SendRoute
from esi.api.routes.table import Param, Route

__all__ = ["ORIGINAL_SEND_ROUTES", "Param", "Route", "SendRoute"]
