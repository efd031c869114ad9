"""Ingest from other tools: LiteLLM's generic API logger and OpenTelemetry (OTLP/HTTP) traces.

Each integration only translates: it turns the other tool's payload into `EventIn` objects and
stores them with `usage_events_record`, so pricing, team resolution and idempotency are the same
as for `/api/v1/events`.
"""
