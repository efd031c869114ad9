"""gunicorn settings for the web service (`gunicorn -c deploy/gunicorn.conf.py llmcost_project.wsgi:application`).

Workers, threads and the bind address stay on the command line. This file prepares
prometheus_client's multiprocess mode: each worker counts its requests into files in
PROMETHEUS_MULTIPROC_DIR and /metrics merges them, so a scrape sees every worker's requests
whichever worker answers it. Unset, a fresh temporary directory is used.
"""

import os
import shutil
import tempfile
from pathlib import Path

# Set here, in the master before any worker starts, so every worker inherits it.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="llmcost-prometheus-")


def on_starting(server):
    """Before any worker starts: an empty directory, so counts of a previous run are not merged in."""
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    # Emptied rather than removed: it may be a mount point (a tmpfs volume).
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def child_exit(server, worker):
    """A worker that exits (restart, crash, scale-down) stops counting in live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
