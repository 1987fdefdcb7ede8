import random

from django.http import HttpRequest, JsonResponse

from mas_sync import RequestTimeout
from mas_sync.contrib.django import mas


def summarize(request: HttpRequest) -> JsonResponse:
    """Ask one of the running summarizers, wherever it runs, and return its answer.

    By default the agents run under ``manage.py runagents``, not in this
    process: ``mas.find()`` gives the ids of the agents declared as
    "summarizer" in whichever processes run them, and this process's client
    agent asks one.
    """
    found = mas.find("summarizer")
    if not found:
        return JsonResponse({"error": "no summarizer is running"}, status=503)
    target = random.choice(found)
    try:
        reply = mas.request(target, {"text": request.GET.get("text", "")}, timeout=5)
    except RequestTimeout:
        return JsonResponse({"error": f"{target} did not answer"}, status=504)
    return JsonResponse({**reply.payload, "answered_by": reply.sender_id})


def agents(request: HttpRequest) -> JsonResponse:
    """Every agent registered on this Redis."""
    return JsonResponse([found["id"] for found in mas.discover()], safe=False)
