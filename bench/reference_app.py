"""The benchmark's yardsticks, served by gunicorn exactly like the product:

- /model: a minimal Django view that just runs the model (json.loads, a one-row DataFrame,
  predict + predict_proba, JsonResponse): no auth, validation, cache, log or metrics.
- /constant: a view that answers a constant, the ceiling of Django + gunicorn on this machine.

Run by bench/run.py with BENCH_MODEL_FILE pointing at a skops file and DJANGO_SETTINGS_MODULE
set to this module.
"""

import json
import os
import warnings

import pandas as pd
import skops.io as sio
from django.http import JsonResponse
from django.urls import path

SECRET_KEY = "bench-only"  # noqa: S105 - a throwaway process on 127.0.0.1
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = __name__
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict = {}
USE_TZ = True

# Printing a warning per request would slow the yardstick down and flatter the product.
warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")

with open(os.environ["BENCH_MODEL_FILE"], "rb") as handle:
    _data = handle.read()
MODEL = sio.loads(_data, trusted=sio.get_untrusted_types(data=_data))


def model_view(request):
    features = json.loads(request.body)["features"]
    frame = pd.DataFrame([features])
    prediction = MODEL.predict(frame)[0]
    probabilities = MODEL.predict_proba(frame)[0]
    return JsonResponse(
        {
            "prediction": prediction.item(),
            "probabilities": dict(
                zip(map(str, MODEL.classes_), probabilities.tolist(), strict=True)
            ),
        }
    )


def constant_view(request):
    return JsonResponse({"prediction": 1})


urlpatterns = [path("model", model_view), path("constant", constant_view)]

from django.core.wsgi import get_wsgi_application  # noqa: E402 - settings above come first

application = get_wsgi_application()
