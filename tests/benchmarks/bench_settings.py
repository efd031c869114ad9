"""The server settings of the dashboard benchmark: the project's, with static names served as they are.

With DEBUG off, pages name static files through `collectstatic`'s manifest; the benchmark measures
the pages' server time, not static files, so (like the page tests) it needs no collected manifest.
"""

from llmcost_project.settings import *  # noqa: F403

STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
