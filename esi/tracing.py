"""OpenTelemetry tracing: one trace per request, from 1C's POST to its completion, across every process.

Off unless the standard variables configure it (`configure`, called by `esi run`): an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or `OTEL_TRACES_EXPORTER` (`otlp`,
`console`; `none` turns it off, as does `OTEL_SDK_DISABLED=true`). The SDK reads the rest itself:
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `_ARG`, `OTEL_BSP_*`,
`OTEL_EXPORTER_OTLP_*_HEADERS` / `_TIMEOUT` / `_CERTIFICATE`. Spans leave in batches (BatchSpanProcessor) over
OTLP/HTTP (protobuf), from a thread of the SDK's own.

Off, nothing is installed, nothing of OpenTelemetry is imported, and the hot path pays one check of `enabled` per
seam. On, the spans are:

- SERVER `POST /send_to_crm` — the API's answer (`esi.api.hot`, which serves or forwards every request); a
  `traceparent` sent by the client is honoured. The request's context is stored with its outbox row;
- PRODUCER `publish <routing key>` — every envelope published (the relay's, as a child of the POST's span even when
  the sweep publishes it later, and the adapters'); its context goes in the message's AMQP headers as W3C
  `traceparent` / `tracestate`, which retries and dead letters keep;
- CONSUMER `process <routing key>` — every delivery handled, a child of the publish that sent it;
- INTERNAL `<system> <operation>` — every call through `esi.systems.calls.Guarded` (limiter and breaker included),
  and under it a CLIENT span per HTTP request to Creatio or the DMS (aiohttp's request hooks), which carries
  `traceparent` on to the system.

Messaging spans follow the semantic conventions (`messaging.system=rabbitmq`, `messaging.destination.name` = the
exchange, `messaging.rabbitmq.destination.routing_key`, `messaging.message.id`, `messaging.operation.type` `send`
(the conventions' name for what was `publish`) or `process`); HTTP spans too (`http.request.method`, `url.full`,
`http.response.status_code`). Every log line written inside a span carries `trace_id` and `span_id`; every timeline
event recorded inside one carries `trace_id` in its detail.

One job in one module, though over 400 lines: the SDK's set-up and the spans of each hop (server, producer,
consumer, client) are one vocabulary of attributes and context propagation, kept side by side so that every process
names a span the same way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["VARIABLES", "TracingConfigError", "configure", "enabled", "exporters_from", "shutdown"]

log = logging.getLogger(__name__)

#: True once `configure` installed a tracer provider. The hot path reads `tracing.enabled` (the module's attribute,
#: never a copy imported by name) and does nothing more while it is False.
enabled: bool = False

#: the variables that turn tracing on or shape it (.env.example documents them)
VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_SDK_DISABLED",
)
_EXPORTERS = ("otlp", "console")
_PROTOCOL = "http/protobuf"

#: `opentelemetry.trace`, once configured (imported then, not before: off, the SDK is never loaded)
_api: Any = None
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_propagator: TraceContextTextMapPropagator | None = None
_record_factory: Callable[..., logging.LogRecord] | None = None
_T = TypeVar("_T")


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something esi cannot do (the message names the variable)."""


def exporters_from(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the environment asks for; [] when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        names = ["otlp"] if endpoint else []
    if not names or "none" in names:
        return []
    unknown = [n for n in names if n not in _EXPORTERS]
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: esi exports spans with {', '.join(_EXPORTERS)} (or none), not {', '.join(unknown)}"
        )
    if "otlp" in names:
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or _PROTOCOL
        )
        if protocol.strip().lower() != _PROTOCOL:
            raise TracingConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: esi sends OTLP as {_PROTOCOL}, not {protocol} "
                "(point it at the collector's HTTP port, 4318)"
            )
    return names


def configure(services: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider if the environment asks for one (see the module); True if tracing is on.

    `services` name the process by default (`esi-onec+crm`) when neither `OTEL_SERVICE_NAME` nor a `service.name`
    in `OTEL_RESOURCE_ATTRIBUTES` does.
    """
    global enabled, _api, _tracer, _provider, _propagator, _record_factory
    if enabled:
        return True
    if environ is None:
        _load_env_file()
        environ = os.environ
    exporters = exporters_from(environ)
    if not exporters:
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    attributes: dict[str, Any] = {"service.instance.id": f"{socket.gethostname()}:{os.getpid()}"}
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = "esi-" + "+".join(services) if services else "esi"
    # the sampler (OTEL_TRACES_SAMPLER, default parent-based always-on) and OTEL_BSP_* come from the environment
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, ...
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _api = trace
    _provider = provider
    _tracer = provider.get_tracer("esi")
    _propagator = TraceContextTextMapPropagator()
    _record_factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(_log_record)
    enabled = True
    log.info(
        "tracing on: spans exported with %s (service %s)",
        ", ".join(exporters),
        provider.resource.attributes.get("service.name"),
    )
    return True


def _load_env_file(path: str = ".env") -> None:
    """OTEL_* variables of `.env` (where esi's settings are read from too) into the environment, where the SDK reads
    them; the environment's own win."""
    if not os.path.isfile(path):
        return
    from dotenv import dotenv_values

    for name, value in dotenv_values(path).items():
        if name.upper().startswith("OTEL_") and value is not None:
            os.environ.setdefault(name.upper(), value)


def shutdown() -> None:
    """Export the spans still buffered and uninstall (at the end of `esi run`)."""
    global enabled, _api, _tracer, _provider, _record_factory
    if not enabled:
        return
    enabled = False
    if _record_factory is not None:
        logging.setLogRecordFactory(_record_factory)
        _record_factory = None
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = _api = None


# --- logs and timeline events ---------------------------------------------------------------------------------------


def _log_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every log record gets the trace and span it was written in (the JSON formatter writes them)."""
    assert _record_factory is not None  # noqa: S101 - narrows a type for mypy; the caller guarantees it
    record = _record_factory(*args, **kwargs)
    ids = current_ids()
    if ids is not None:
        record.trace_id, record.span_id = ids
    return record


def current_ids() -> tuple[str, str] | None:
    """The current span's trace id and span id, in hex; None outside a span (or with tracing off)."""
    if not enabled:
        return None
    context = _api.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def add_trace_id(detail: dict[str, Any]) -> None:
    """Put the current trace's id into a timeline event's detail (called only while `enabled`)."""
    ids = current_ids()
    if ids is not None:
        detail.setdefault("trace_id", ids[0])


# --- context carried in AMQP headers and the outbox -----------------------------------------------------------------


class _HeadersGetter:
    """Reads W3C trace context from AMQP headers (values arrive as str, or bytes from other publishers)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        return [value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeadersGetter()


def inject(headers: MutableMapping[str, Any]) -> None:
    """Put the current span's context into `headers` (`traceparent`, and `tracestate` when there is one)."""
    assert _propagator is not None  # noqa: S101 - narrows a type for mypy; the caller guarantees it
    _propagator.inject(headers)


def _extract(carrier: Mapping[str, Any]) -> Any:
    assert _propagator is not None  # noqa: S101 - narrows a type for mypy; the caller guarantees it
    return _propagator.extract(carrier, getter=_GETTER)  # type: ignore[arg-type]


def _stored_context(text: str) -> Any:
    """The context `outbox_context` stored; None (no parent) when it cannot be read: a row is published anyway."""
    try:
        carrier = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return _extract(carrier) if isinstance(carrier, dict) else None


def outbox_context(request_id: str) -> str | None:
    """The current context as stored with an outbox row (JSON of its W3C headers), so that the relay's publish span
    is a child of the API's span however late it runs; the request id goes on the current span."""
    _api.get_current_span().set_attribute("esi.request_id", request_id)
    carrier: dict[str, str] = {}
    inject(carrier)
    return orjson.dumps(carrier).decode() if carrier else None


# --- spans ----------------------------------------------------------------------------------------------------------


def _messaging(
    operation_type: str,
    operation_name: str,
    exchange: str,
    routing_key: str,
    message_id: str | None,
    request_id: str | None,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation_name,
        "messaging.destination.name": exchange,
        "messaging.rabbitmq.destination.routing_key": routing_key,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    if request_id:
        attributes["messaging.message.conversation_id"] = request_id
        attributes["esi.request_id"] = request_id
    return attributes


@contextlib.contextmanager
def publishing(
    exchange: str, routing_key: str, message_id: str | None, *, request_id: str | None = None, parent: str | None = None
) -> Iterator[Span]:
    """A PRODUCER span around one publish, current inside the block (`inject` then carries it in the headers).

    `parent` is an outbox row's stored context: the span is its child. Without one, the current span's."""
    assert _tracer is not None  # noqa: S101 - narrows a type for mypy; the caller guarantees it
    context = _stored_context(parent) if parent else None
    with _tracer.start_as_current_span(
        f"publish {routing_key}",
        context=context,
        kind=_api.SpanKind.PRODUCER,
        attributes=_messaging("send", "publish", exchange, routing_key, message_id, request_id),
    ) as span:
        yield span


@contextlib.contextmanager
def consuming(
    message: Any, headers: Mapping[str, Any], *, queue: str, exchange: str | None, routing_key: str | None, attempt: int
) -> Iterator[Span]:
    """A CONSUMER span around the handling of one delivery, a child of the publish whose context its headers carry.
    `settle` gives it the delivery's outcome."""
    assert _tracer is not None  # noqa: S101 - narrows a type for mypy; the caller guarantees it
    key = routing_key or ""
    attributes = _messaging("process", "process", exchange or "", key, message.message_id, message.correlation_id)
    attributes["esi.queue"] = queue
    attributes["esi.attempt"] = attempt
    tag = getattr(message, "delivery_tag", None)
    if tag is not None:
        attributes["messaging.rabbitmq.message.delivery_tag"] = tag
    with _tracer.start_as_current_span(
        f"process {key}", context=_extract(headers), kind=_api.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


#: consumer outcomes that mean the delivery's handling failed
_FAILED_OUTCOMES = frozenset({"retried", "dead_lettered"})


def settle(span: Span, outcome: str) -> None:
    span.set_attribute("esi.outcome", outcome)
    if outcome in _FAILED_OUTCOMES:
        span.set_status(_api.StatusCode.ERROR, outcome)


def traced_call(call: Callable[..., Awaitable[_T]], system: str, operation: str) -> Callable[..., Awaitable[_T]]:
    """`call` (a guarded client method) inside an INTERNAL span `<system> <operation>`; failures recorded on it."""
    tracer = _tracer
    assert tracer is not None  # noqa: S101 - narrows a type for mypy; the caller guarantees it
    name = f"{system} {operation}"
    attributes = {"esi.system": system, "esi.operation": operation}

    @functools.wraps(call)
    async def traced(*args: Any, **kwargs: Any) -> _T:
        with tracer.start_as_current_span(name, kind=_api.SpanKind.INTERNAL, attributes=attributes):
            return await call(*args, **kwargs)

    return traced


# --- the API's server span ------------------------------------------------------------------------------------------

_CONTEXT_HEADERS = (b"traceparent", b"tracestate")
#: probes and scrapes: a span each would only bury the requests' traces
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@contextlib.contextmanager
def serving(scope: MutableMapping[str, Any]) -> Iterator[Span]:
    """A SERVER span around one HTTP request to the API, current inside the block; `answered` names it by its route
    and gives it the status. A `traceparent` sent by the client makes it a child of the client's span."""
    assert _tracer is not None  # noqa: S101 - narrows a type for mypy; the caller guarantees it
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ()) if k in _CONTEXT_HEADERS}
    method = scope.get("method", "")
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": scope.get("path", ""),
        "url.scheme": scope.get("scheme", "http"),
    }
    if scope.get("query_string"):
        attributes["url.query"] = scope["query_string"].decode("latin-1")
    server, client = scope.get("server"), scope.get("client")
    if server:
        attributes["server.address"], attributes["server.port"] = server[0], server[1]
    if client:
        attributes["client.address"] = client[0]
    with _tracer.start_as_current_span(
        method, context=_extract(carrier) if carrier else None, kind=_api.SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


def answered(route: str, method: str, status: int) -> None:
    """The current server span's route and status (called where the API records its HTTP metrics)."""
    span = _api.get_current_span()
    if getattr(span, "kind", None) is not _api.SpanKind.SERVER:
        return
    span.update_name(f"{method} {route}")
    span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(_api.StatusCode.ERROR)
        span.set_attribute("error.type", str(status))


# --- HTTP calls to the external systems -----------------------------------------------------------------------------


def aiohttp_trace_configs() -> list[Any]:
    """aiohttp request hooks making a CLIENT span of every HTTP request and sending `traceparent` with it; [] when
    tracing is off (the session then has no hooks at all)."""
    if not enabled:
        return []
    import aiohttp

    tracer = _tracer
    assert tracer is not None  # noqa: S101 - narrows a type for mypy; the caller guarantees it
    assert _propagator is not None  # noqa: S101 - narrows a type for mypy; the caller guarantees it
    propagator = _propagator

    async def start(_session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        url = params.url
        attributes: dict[str, Any] = {
            "http.request.method": params.method,
            "url.full": str(url.with_user(None).with_password(None)),
        }
        if url.host:
            attributes["server.address"] = url.host
        if url.port:
            attributes["server.port"] = url.port
        span = tracer.start_span(params.method, kind=_api.SpanKind.CLIENT, attributes=attributes)
        ctx.span = span
        propagator.inject(params.headers, context=_api.set_span_in_context(span))

    async def end(_session: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        span = getattr(ctx, "span", None)
        if span is None:
            return
        status = params.response.status
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_status(_api.StatusCode.ERROR)
            span.set_attribute("error.type", str(status))
        span.end()

    async def failed(_session: Any, ctx: Any, params: aiohttp.TraceRequestExceptionParams) -> None:
        span = getattr(ctx, "span", None)
        if span is None:
            return
        span.record_exception(params.exception)
        span.set_status(_api.StatusCode.ERROR, f"{type(params.exception).__name__}: {params.exception}")
        span.set_attribute("error.type", type(params.exception).__name__)
        span.end()

    config = aiohttp.TraceConfig()
    config.on_request_start.append(start)
    config.on_request_end.append(end)
    config.on_request_exception.append(failed)
    return [config]
