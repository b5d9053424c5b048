from django.http import HttpResponse, JsonResponse
from mysite.version import GREETING

from polls.models import Question


def index(request):
    return HttpResponse(f"{GREETING}\n", content_type="text/plain")


def healthz(request):
    return JsonResponse({"ok": True, "questions": Question.objects.count()})
