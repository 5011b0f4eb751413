"""The operator console: web pages for requests, timelines, dead letters and systems, served by the 1C API at
/console, rendered on the server with Jinja2 (templates/), with a small script and style of its own (static/) and
nothing from the internet.

Its modules, one job each: esi.console.router puts the routes together (`console_router`, and what each page
needs and shows); esi.console.core is what every page renders, checks and answers with (the Jinja2 environment,
the security headers, the CSRF check of an action, the permission helpers); esi.console.overview, .requests,
.dead_letters and .systems hold the pages and actions of one area each; esi.console.views shapes what the
templates draw, esi.console.masking hides personal data, esi.console.csrf issues and checks the tokens."""

from esi.console.router import console_router

__all__ = ["console_router"]
