# One image for every process of the stack: web (gunicorn), Celery worker, Celery beat, migrations.
# Nothing secret is built in: settings come from the environment when a container starts.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 llmcost

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install -r requirements.txt

# The code stays owned by root: the service user can read it but not change it.
COPY . .
# Static files are collected into the image (whitenoise serves them). Importing settings needs a
# SECRET_KEY: a random one that exists only for this command.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    LLMCOST_VAR_DIR=/tmp/collectstatic \
    python manage.py collectstatic --no-input -v0 \
    && rm -rf /tmp/collectstatic

USER llmcost
EXPOSE 8000
# deploy/gunicorn.conf.py merges the request metrics of all workers for /metrics.
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "llmcost_project.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4"]
