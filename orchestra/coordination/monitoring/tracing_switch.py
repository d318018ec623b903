"""Whether a run is traced, decided without importing OpenTelemetry when it is not.

Tracing is on when ``TracingConfig.enabled`` is True, or when it is None (the default) and a
tracer provider is at hand: one given in the config, or a global one that is not
OpenTelemetry's default proxy. A process that never imported ``opentelemetry.trace`` cannot
have set a global provider (short of naming one in ``OTEL_PYTHON_TRACER_PROVIDER``), so that
case is answered by a look at ``sys.modules``: a run that is not traced imports nothing.
"""

from __future__ import annotations

import os
import sys

from orchestra.coordination.config import TracingConfig

PROVIDER_VARIABLE = "OTEL_PYTHON_TRACER_PROVIDER"


def tracing_on(config: TracingConfig) -> bool:
    """Whether a run with ``config`` is traced (see the module's docstring)."""
    if config.enabled is not None:
        return config.enabled
    return config.tracer_provider is not None or _global_provider_set()


def _global_provider_set() -> bool:
    if "opentelemetry.trace" not in sys.modules and PROVIDER_VARIABLE not in os.environ:
        return False
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
