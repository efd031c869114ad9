"""The Celery app: settings come from Django's under the CELERY_ namespace; tasks from each app."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmcost_project.settings")

app = Celery("llmcost")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
