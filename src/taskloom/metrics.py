"""The Prometheus metrics taskloom exports: one name per fact a platform team alerts on.

The names live here, once, so the code that exports them, the chart's ServiceMonitor and the Grafana
dashboard (charts/taskloom/dashboards/) cannot drift apart; a test holds the dashboard to this list.

- the drift monitor (`taskloom monitor --metrics-port N`, its own /metrics port): DRIFT_P_VALUE,
  DRIFT_STATISTIC, DRIFT_WINDOWS, ALARMS, RETRAINS_STARTED
- the events gateway (GET /metrics beside its webhook): GATEWAY_FORWARDED, GATEWAY_REFUSALS
- the Triton model (Triton's own metrics port, a python-backend custom metric): SERVED_REQUESTS

Each exporting process builds its metric objects on its own CollectorRegistry (`MonitorMetrics`,
`GatewayMetrics`), never on prometheus_client's global one: two gateways or monitors in one process
(the tests) then count apart. prometheus_client is imported where it is used: the Triton model reads
the names from here in an environment that does not have it.
"""

from __future__ import annotations

from typing import Any

from taskloom.errors import UserError

# name → (type, labels, help)
DRIFT_P_VALUE = "taskloom_drift_p_value"
DRIFT_STATISTIC = "taskloom_drift_statistic"
DRIFT_WINDOWS = "taskloom_drift_windows_total"
ALARMS = "taskloom_drift_alarms_total"
RETRAINS_STARTED = "taskloom_retrains_started_total"
GATEWAY_FORWARDED = "taskloom_gateway_forwarded_total"
GATEWAY_REFUSALS = "taskloom_gateway_refusals_total"
SERVED_REQUESTS = "taskloom_served_requests_total"

METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    DRIFT_P_VALUE: ("gauge", ("task", "detector"), "p-value of the latest tested drift window per task"),
    DRIFT_STATISTIC: ("gauge", ("task", "detector"), "the detector's test statistic in the latest tested window"),
    DRIFT_WINDOWS: ("counter", ("task", "drift"), "windows tested, by outcome (drift: true = an alarm policy hit)"),
    ALARMS: ("counter", ("task",), "drift alarms raised by the alarm policy"),
    RETRAINS_STARTED: ("counter", ("task",), "alarms delivered for the first time, each starting one retrain run"),
    GATEWAY_FORWARDED: ("counter", (), "events forwarded to the webhook"),
    GATEWAY_REFUSALS: ("counter", ("reason",), "events refused, by reason (see GATEWAY_REFUSAL_REASONS)"),
    SERVED_REQUESTS: ("counter", ("task", "adapter", "version"), "texts served, per task, adapter and model version"),
}

# The `reason` label of GATEWAY_REFUSALS: a fixed set, so an alert can name one and a dashboard shows zeros.
GATEWAY_REFUSAL_REASONS = (
    "unsigned",  # 401: no signature header
    "bad_signature",  # 401: HMAC does not match (forged, or the wrong secret)
    "stale",  # 401: event time further than --max-age from now
    "no_time",  # 401: the event carries no time to check
    "not_cloudevent",  # 400: the request is not a CloudEvent
    "too_large",  # 413: body missing or over the size limit
    "replay",  # 409: id forwarded before
    "forward_failed",  # 502: the webhook refused or could not be reached
    "other",  # a refusal this list does not know yet
)


def build(registry: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The prometheus_client objects of `names` (from METRICS) registered on `registry`."""
    from prometheus_client import Counter, Gauge

    kinds = {"counter": Counter, "gauge": Gauge}
    out = {}
    for name in names:
        kind, labels, help_text = METRICS[name]
        out[name] = kinds[kind](name, help_text, labels, registry=registry)
    return out


class Exporter:
    """A process's own registry of metrics; `.text()` is the exposition, `.serve(port)` a /metrics server."""

    names: tuple[str, ...] = ()

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=True)
        self.m = build(self.registry, self.names)
        self._server: Any = None

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    @property
    def content_type(self) -> str:
        from prometheus_client import CONTENT_TYPE_LATEST

        return CONTENT_TYPE_LATEST

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve GET /metrics on (host, port) from a daemon thread (port 0: any free one); returns the port."""
        from prometheus_client import start_http_server

        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise UserError(f"--metrics-port {port}: cannot listen on {host}:{port}: {e.strerror or e}") from None
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class MonitorMetrics(Exporter):
    """What `taskloom monitor` decides, as it decides it."""

    names = (DRIFT_P_VALUE, DRIFT_STATISTIC, DRIFT_WINDOWS, ALARMS, RETRAINS_STARTED)

    def latest(self, task: str, detector: str, p_value: float, statistic: float) -> None:
        """The gauges of a task's latest tested window (also set from windows.jsonl after a restart)."""
        self.m[DRIFT_P_VALUE].labels(task=task, detector=detector).set(p_value)
        self.m[DRIFT_STATISTIC].labels(task=task, detector=detector).set(statistic)

    def window(self, task: str, detector: str, p_value: float, statistic: float, drift: bool) -> None:
        self.latest(task, detector, p_value, statistic)
        self.m[DRIFT_WINDOWS].labels(task=task, drift="true" if drift else "false").inc()

    def alarm(self, task: str) -> None:
        self.m[ALARMS].labels(task=task).inc()

    def retrain(self, task: str) -> None:
        self.m[RETRAINS_STARTED].labels(task=task).inc()


class GatewayMetrics(Exporter):
    """What the events gateway lets through and refuses; every refusal reason starts at 0."""

    names = (GATEWAY_FORWARDED, GATEWAY_REFUSALS)

    def __init__(self) -> None:
        super().__init__()
        for reason in GATEWAY_REFUSAL_REASONS:
            self.m[GATEWAY_REFUSALS].labels(reason=reason)

    def forwarded(self) -> None:
        self.m[GATEWAY_FORWARDED].inc()

    def refused(self, reason: str) -> None:
        self.m[GATEWAY_REFUSALS].labels(reason=reason if reason in GATEWAY_REFUSAL_REASONS else "other").inc()
