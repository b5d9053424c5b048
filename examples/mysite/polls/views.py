from django.http import HttpResponse, JsonResponse
from mysite.version import GREETING


def index(request):
    return HttpResponse(f"{GREETING}\n", content_type="text/plain")


def healthz(request):
    """Liveness for the deploy's health check: answers without touching the database."""
    return JsonResponse({"ok": True})
