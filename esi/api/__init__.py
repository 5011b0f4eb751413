"""The HTTP API through which 1C sends requests and reads their outcome."""

from fastapi.telemetry import TelemetryConfig

#: FastAPI's OpenTelemetry hooks, off in every app of ours: esi's metrics are Prometheus' (esi.api.hot), and the
#: hooks asked for providers on every request (docs/performance.md)
TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
