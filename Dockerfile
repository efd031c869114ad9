FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# collectstatic needs a secret to import settings; this throwaway one never reaches a running container.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --no-input -v0
RUN useradd --create-home llmcost
USER llmcost
EXPOSE 8000
CMD ["gunicorn", "llmcost_project.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4"]
