"""The operator console: web pages for requests, timelines, dead letters and systems, served by the 1C API at
/console (esi.console.routes), rendered on the server with Jinja2 (templates/), with a small script and style of
its own (static/) and nothing from the internet."""

from esi.console.routes import console_router

__all__ = ["console_router"]
