"""A Django view of the Prometheus metrics of this process's agents (the ``metrics`` extra).

Route it in ``urls.py``::

    from django.urls import path
    from mas_sync.contrib.django.metrics import metrics_view

    urlpatterns = [path("metrics", metrics_view)]

It serves :data:`mas_sync.metrics.REGISTRY`: the agents that run in the
process that answers (``MAS_START_IN_PROCESS``, or the client agent of
views). Agents run by ``manage.py runagents`` are in that process: serve
theirs with ``runagents --metrics-port P``.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mas_sync.metrics import REGISTRY

__all__ = ["metrics_view"]


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus' text format; runs in the thread that serves the request."""
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
