"""MkDocs hooks (mkdocs.yml `hooks:`): the reference pages are written from the code at every build, so they cannot
drift from it.

A page asks for a generated part with a marker on a line of its own, `<!-- gen:NAME -->` or `<!-- gen:NAME ARG -->`:

    gen:openapi      the HTTP API's operations, from the OpenAPI document of `esi.api.app.create_app` (also written
                     into the site as reference/openapi.json)
    gen:asyncapi     the bus's channels and messages, from contracts/asyncapi.json
    gen:cli          every `esi` command with its arguments and options, from the typer app (`esi.cli.app`)
    gen:metrics      every Prometheus series, from the definitions in esi/metrics.py
    gen:alerts       the alert rules of deploy/prometheus/alerts.yml, each linked to its runbook entry
    gen:alert NAME   one alert's rule (severity, for, expression, summary), in a runbook entry
    gen:error-codes  the stable error codes: found in esi's source, explained in docs/gen/error_codes.yml

The build fails (PluginError) when the runbook has no entry for an alert (or one for an alert that is gone), when a
marker names nothing known, and when error_codes.yml explains a code esi no longer has. A code esi has that the file
does not explain yet is listed with the message esi gives it.
"""

from __future__ import annotations

import ast
import json
import re
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ASYNCAPI = ROOT / "contracts" / "asyncapi.json"
ERROR_CODES = Path(__file__).with_name("error_codes.yml")
CHART = ROOT / "bench" / "results" / "chart.png"
#: the growth charts of `make bench` (bench/chart.py), beside it: docs/performance.md shows those that exist
GROWTH_CHARTS = ("history.png", "sets.png", "drain.png")
#: the pages that must hold one entry per alert (the English runbook and its translation)
RUNBOOKS = ("runbook.md", "runbook.ru.md")

MARKER = re.compile(r"^<!-- gen:([a-z-]+)(?: ([A-Za-z0-9_.-]+))? -->$", re.MULTILINE)


# --- the sources ------------------------------------------------------------------------------------------------------


@cache
def openapi() -> dict[str, Any]:
    from esi.api.app import create_app
    from esi.api.deps import ApiDeps
    from esi.systems.registry import load_registry

    # the document only: no store, nothing published (as tests/integration/test_schemathesis.py builds it)
    app = create_app(
        ApiDeps(registry=load_registry(), store=None, on_accepted=lambda row: None, max_pdf_bytes=10 * 1024 * 1024)  # type: ignore[arg-type]
    )
    return app.openapi()


@cache
def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


@cache
def error_code_texts() -> dict[str, dict[str, str]]:
    return yaml.safe_load(ERROR_CODES.read_text(encoding="utf-8"))


def cell(text: Any) -> str:
    """A value as one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def anchor(name: str) -> str:
    """The id MkDocs gives a heading that is just `name` (the toc extension's slug)."""
    return re.sub(r"[^\w-]", "", name.lower().replace(" ", "-"))


# --- the HTTP API -----------------------------------------------------------------------------------------------------


def gen_openapi(_arg: str | None, _lang: str) -> str:
    document = openapi()
    lines = [
        f"*{cell(document['info']['title'])}, version {document['info']['version']}; OpenAPI {document['openapi']}. "
        "The whole document: [openapi.json](openapi.json); a running API serves it at `/openapi.json` and the "
        "interactive page at `/docs`.*",
        "",
        "| Method and path | What it does | Answers |",
        "|---|---|---|",
    ]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            summary = operation.get("summary") or operation.get("operationId", "")
            description = (operation.get("description") or "").strip().split("\n\n")[0]
            what = summary if not description else f"**{summary}** — {description}"
            answers = ", ".join(f"`{code}`" for code in operation.get("responses", {}))
            lines.append(f"| `{method.upper()} {path}` | {cell(what)} | {answers} |")
    return "\n".join(lines)


# --- the bus's contract -----------------------------------------------------------------------------------------------


def gen_asyncapi(_arg: str | None, _lang: str) -> str:
    document = json.loads(ASYNCAPI.read_text(encoding="utf-8"))
    lines = [
        f"*{cell(document['info']['title'])}, version {document['info']['version']}; AsyncAPI "
        f"{document['asyncapi']}, from `contracts/asyncapi.json`.*",
        "",
        "### Channels",
        "",
        "| Channel | What | Messages |",
        "|---|---|---|",
    ]
    for name, channel in document["channels"].items():
        messages = ", ".join(f"[`{m}`](#{anchor(m)})" for m in channel.get("messages", {}))
        lines.append(f"| `{channel.get('address', name)}` | {cell(channel.get('description', ''))} | {messages} |")
    lines += ["", "### Operations", "", "| Operation | Channel | |", "|---|---|---|"]
    for name, operation in document["operations"].items():
        channel = operation["channel"]["$ref"].rsplit("/", 1)[-1]
        lines.append(f"| {cell(operation.get('title', name))} | `{channel}` | {operation['action']} |")
    lines += ["", "### Messages", ""]
    schemas = document["components"].get("schemas", {})
    for name, message in document["components"]["messages"].items():
        lines += [f"#### {name}", "", cell(message.get("summary") or message.get("title") or ""), ""]
        payload = message.get("payload", {})
        if "$ref" in payload:
            payload = schemas.get(payload["$ref"].rsplit("/", 1)[-1], payload)
        parts = payload.get("allOf", [payload])
        inner = next((p["properties"]["payload"] for p in parts if "payload" in p.get("properties", {})), payload)
        if "$ref" in inner:
            inner = schemas.get(inner["$ref"].rsplit("/", 1)[-1], inner)
        properties = inner.get("properties", {})
        if properties:
            required = set(inner.get("required", ()))
            lines += ["| Payload field | Type | Required | |", "|---|---|---|---|"]
            for field, schema in properties.items():
                kind = schema.get("type") or " or ".join(
                    str(s.get("type", s.get("$ref", "?").rsplit("/", 1)[-1])) for s in schema.get("anyOf", [])
                )
                lines.append(
                    f"| `{field}` | {cell(kind)} | {'yes' if field in required else ''} | "
                    f"{cell(schema.get('description', schema.get('title', '')))} |"
                )
            lines.append("")
    return "\n".join(lines)


# --- the command line -------------------------------------------------------------------------------------------------


def gen_cli(_arg: str | None, _lang: str) -> str:
    import typer.main

    from esi.cli import app

    # typer carries its own copy of click: duck typing rather than click's classes
    root = typer.main.get_command(app)
    lines: list[str] = []

    def walk(command: Any, path: list[str]) -> None:
        context = command.context_class(command, info_name=" ".join(path))
        if hasattr(command, "list_commands"):
            if len(path) > 1:
                lines.extend([f"### `{' '.join(path)}`", "", cell(command.help or ""), ""])
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                if sub is not None and not sub.hidden:
                    walk(sub, [*path, name])
            return
        usage = " ".join(command.collect_usage_pieces(context))
        lines.extend([f"### `{' '.join(path)}`", "", f"```\n{' '.join(path)} {usage}\n```", ""])
        help_text = (command.help or "").split("\f")[0].strip()
        if help_text:
            lines.extend([help_text, ""])
        params = [p for p in command.params if not getattr(p, "hidden", False) and p.name != "help"]
        if params:
            lines.extend(["| Argument or option | Default | |", "|---|---|---|"])
            for param in params:
                text = getattr(param, "help", None) or ""
                default = param.default
                if param.param_type_name == "option":
                    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
                    if param.show_default is False or (param.is_flag and not param.default):
                        default = None
                    if param.envvar:
                        text += f" (env: `{param.envvar}`)"
                else:
                    names = f"`{(param.metavar or param.name or '').upper()}`"
                    if param.required:
                        text = ("required. " + text).strip()
                shown = "" if default in (None, (), []) or callable(default) else f"`{default}`"
                lines.append(f"| {names} | {shown} | {cell(text)} |")
            lines.append("")

    walk(root, ["esi"])
    return "\n".join(lines)


# --- metrics and alerts -----------------------------------------------------------------------------------------------


def gen_metrics(_arg: str | None, _lang: str) -> str:
    from prometheus_client.metrics import MetricWrapperBase

    from esi import metrics

    lines = ["| Series | Type | Labels | What |", "|---|---|---|---|"]
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        kind = value._type
        name = value._name + ("_total" if kind == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in value._labelnames) or "—"
        lines.append(f"| `{name}` | {kind} | {labels} | {cell(value._documentation)} |")
    return "\n".join(lines)


def gen_alerts(_arg: str | None, lang: str, up: str = "") -> str:
    runbook = up + ("runbook.ru.md" if lang == "ru" else "runbook.md")
    head = "| Оповещение | Важность | Через | Когда |" if lang == "ru" else "| Alert | Severity | After | When |"
    lines = [head, "|---|---|---|---|"]
    for rule in alert_rules():
        name = rule["alert"]
        lines.append(
            f"| [`{name}`]({runbook}#{anchor(name)}) | {rule['labels']['severity']} | {rule['for']} | "
            f"{cell(rule['annotations']['summary'])} |"
        )
    return "\n".join(lines)


def gen_alert(name: str | None, lang: str) -> str:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    if name not in rules:
        raise PluginError(f"the runbook has an entry for {name!r}, which deploy/prometheus/alerts.yml does not define")
    rule = rules[name]
    title = "Правило" if lang == "ru" else "The rule"
    severity = "важность" if lang == "ru" else "severity"
    after = "срабатывает через" if lang == "ru" else "fires after"
    expr = "\n".join("    " + line for line in str(rule["expr"]).strip().splitlines())
    description = " ".join(str(rule["annotations"]["description"]).split())
    return "\n".join(
        [
            f'??? abstract "{title}: {severity} `{rule["labels"]["severity"]}`, {after} `{rule["for"]}`"',
            "",
            f"    {cell(rule['annotations']['summary'])}",
            "",
            f"    {description}",
            "",
            "    ```promql",
            expr,
            "    ```",
        ]
    )


def check_runbook(markdown: str, page_name: str) -> None:
    named = {m.group(2) for m in MARKER.finditer(markdown) if m.group(1) == "alert"}
    missing = [rule["alert"] for rule in alert_rules() if rule["alert"] not in named]
    if missing:
        raise PluginError(f"{page_name} has no entry (`<!-- gen:alert NAME -->`) for the alerts {missing}")


# --- error codes ------------------------------------------------------------------------------------------------------


@cache
def codes_in_source() -> dict[str, dict[str, str]]:
    """Every error code esi's source gives, with where, the HTTP status (ApiError) or the error class, and the first
    message it comes with."""
    found: dict[str, dict[str, str]] = {}

    def note(code: str, module: str, kind: str, message: str) -> None:
        if re.fullmatch(r"[a-z][a-z0-9_]*", code) and code not in found:
            found[code] = {"module": module, "kind": kind, "message": message}

    for path in sorted((ROOT / "esi").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if "fake" in module:  # the fakes' own errors imitate the real systems', not esi's
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if func == "ApiError" and len(node.args) >= 3:
                    status, code, message = node.args[:3]
                    if isinstance(code, ast.Constant) and isinstance(status, ast.Constant):
                        note(code.value, module, f"HTTP {status.value}", _literal(message))
                for keyword in node.keywords:
                    if keyword.arg == "code" and isinstance(keyword.value, ast.Constant) and func[:1].isupper():
                        note(keyword.value.value, module, func, _literal(node.args[0]) if node.args else "")
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if (
                        isinstance(statement, ast.AnnAssign | ast.Assign)
                        and isinstance(statement.value, ast.Constant)
                        and "code" in [t.id for t in _targets(statement) if isinstance(t, ast.Name)]
                        and isinstance(statement.value.value, str)
                    ):
                        note(statement.value.value, module, node.name, (ast.get_docstring(node) or "").split("\n")[0])
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "code"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        note(value.value, module, "error field", "")
    return found


def _targets(statement: ast.AnnAssign | ast.Assign) -> list[ast.expr]:
    return [statement.target] if isinstance(statement, ast.AnnAssign) else list(statement.targets)


def _literal(node: ast.expr) -> str:
    """A message as written in the source: an f-string's placeholders as `{...}`."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) if isinstance(v, ast.Constant) else "{…}" for v in node.values)
    return ""


def gen_error_codes(_arg: str | None, lang: str) -> str:
    texts = error_code_texts()
    source = codes_in_source()
    all_strings = {
        node.value
        for path in (ROOT / "esi").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    gone = [code for code in texts if "<" not in code and code not in source and code not in all_strings]
    if gone:
        raise PluginError(f"docs/gen/error_codes.yml explains codes esi no longer has: {gone}")
    if lang == "ru":
        lines = ["| Код | Где | Что значит и что делать |", "|---|---|---|"]
    else:
        lines = ["| Code | Where | What it means and what to do |", "|---|---|---|"]
    for code in sorted(set(source) | set(texts)):
        text = texts.get(code, {}).get(lang)
        where = texts.get(code, {}).get("where") or source.get(code, {}).get("kind", "")
        if not text:  # not explained yet: what esi says with it
            message = source[code]["message"]
            text = f"«{message}»" if lang == "ru" and message else (f"“{message}”" if message else "—")
        lines.append(f"| `{code}` | {cell(where)} | {cell(text)} |")
    return "\n".join(lines)


GENERATORS = {
    "openapi": gen_openapi,
    "asyncapi": gen_asyncapi,
    "cli": gen_cli,
    "metrics": gen_metrics,
    "alerts": gen_alerts,
    "alert": gen_alert,
    "error-codes": gen_error_codes,
}


# --- the hooks --------------------------------------------------------------------------------------------------------


def on_files(files: Files, config: Any) -> Files:
    # from a file, not `content=`: the i18n plugin reads every file's source path
    written = Path(tempfile.mkdtemp(prefix="esi-docs-")) / "openapi.json"
    written.write_text(json.dumps(openapi(), indent=2), encoding="utf-8")
    files.append(File.generated(config, "reference/openapi.json", abs_src_path=str(written)))
    for chart in (CHART, *(CHART.with_name(name) for name in GROWTH_CHARTS)):
        if chart.exists():
            files.append(File.generated(config, f"assets/{chart.name}", abs_src_path=str(chart)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    source = Path(page.file.abs_src_path or page.file.src_path)
    lang = "ru" if source.name.endswith(".ru.md") else "en"
    if source.name in RUNBOOKS:
        check_runbook(markdown, source.name)

    def replace(match: re.Match[str]) -> str:
        generator = GENERATORS.get(match.group(1))
        if generator is None:
            raise PluginError(f"{source.name}: unknown generated part {match.group(0)}")
        if generator is gen_alerts:  # links to the runbook, relative to the page
            return gen_alerts(match.group(2), lang, "../" * page.file.src_uri.count("/"))
        return generator(match.group(2), lang)

    return MARKER.sub(replace, markdown)
