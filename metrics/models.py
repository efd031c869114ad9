from django.db import models
from django.utils import timezone

from billing.pricing.calculate import CostSource
from billing.pricing.money import MoneyField, MoneySumField
from teams.models import Organization, Team


class UsageEvent(models.Model):
    """One LLM call, as a client reported it, priced at the time it was made."""

    class Status(models.TextChoices):
        SUCCESS = "success", "Success"
        ERROR = "error", "Error"

    # No index of its own: every index below starts with it.
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_index=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    # The token the event came with (token budgets count it); kept when the token is deleted.
    api_token = models.ForeignKey(
        "teams.ApiToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    request_id = models.CharField(max_length=128)
    timestamp = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)

    model = models.CharField(max_length=200, help_text="Normalised model name (prices and charts use it).")
    model_requested = models.CharField(max_length=200, help_text="The model name exactly as sent.")
    provider = models.CharField(max_length=64, blank=True, help_text="The provider of the price used.")
    provider_requested = models.CharField(max_length=64, blank=True, help_text="The provider exactly as sent.")

    prompt_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0, help_text="Prompt tokens read from the provider's cache.")
    cache_write_tokens = models.BigIntegerField(default=0, help_text="Prompt tokens written to the provider's cache.")
    usage = models.JSONField(
        default=dict, blank=True, help_text="Other usage the provider bills, by genai-prices usage key."
    )

    prompt_cost = MoneyField(default=0)
    output_cost = MoneyField(default=0)
    cost = MoneyField(default=0)
    client_cost = MoneyField(null=True, blank=True)  # type: ignore[misc]  # reads None or a Decimal
    is_priced = models.BooleanField(default=True, help_text="False: no price matched; cost is the client's, if any.")
    price = models.ForeignKey("billing.ModelPrice", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    cost_source = models.CharField(max_length=16, choices=CostSource.choices, default=CostSource.CATALOG)
    list_cost = MoneyField(  # type: ignore[misc]  # reads None or a Decimal
        null=True, blank=True, help_text="The platform's price, before the organization's override or discount."
    )

    latency_ms = models.FloatField(default=0)
    time_to_first_token_ms = models.FloatField(null=True, blank=True)
    cache_hit = models.BooleanField(default=False)
    cache_similarity_score = models.FloatField(null=True, blank=True)
    is_batched = models.BooleanField(default=False)
    batch_id = models.CharField(max_length=128, blank=True)
    batch_size = models.IntegerField(null=True, blank=True)

    user_id = models.CharField(max_length=255, blank=True)
    end_user = models.CharField(max_length=255, blank=True)
    query_type = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=16, default=Status.SUCCESS)
    error_message = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    tags = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "request_id"], name="event_request_id_unique_in_org")
        ]
        indexes = [
            models.Index(fields=["organization", "timestamp"], name="event_org_time"),
            models.Index(fields=["organization", "team", "timestamp"], name="event_org_team_time"),
            # One user's events (a user filter on the dashboard or the requests page): rollups keep
            # users by day and without models or latencies, so those views read raw events.
            models.Index(fields=["organization", "user_id", "timestamp"], name="event_org_user_time"),
            # A token budget's period (rollups do not keep tokens).
            models.Index(fields=["api_token", "timestamp"], name="event_token_time"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.cost}"


class CacheStat(models.Model):
    """A client's own report of its response cache (the seed's cache_metrics)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    timestamp = models.DateTimeField(default=timezone.now)
    cache_hit = models.BigIntegerField(default=0)
    cache_miss = models.BigIntegerField(default=0)
    avg_cache_lookup_time_ms = models.FloatField(default=0)

    class Meta:
        indexes = [models.Index(fields=["organization", "timestamp"], name="cachestat_org_time")]

    def __str__(self) -> str:
        return f"cache {self.cache_hit}/{self.cache_hit + self.cache_miss} at {self.timestamp:%Y-%m-%d %H:%M}"


class BatchRun(models.Model):
    """One batch of LLM calls processed together (the seed's batch_metrics)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    batch_id = models.CharField(max_length=128)
    timestamp = models.DateTimeField(default=timezone.now)
    batch_size = models.IntegerField()
    total_tokens = models.BigIntegerField(default=0)
    batch_cost = MoneyField(default=0)
    batch_latency_ms = models.FloatField(default=0)
    status = models.CharField(max_length=16, default="success")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "batch_id"], name="batch_id_unique_in_org")]
        indexes = [models.Index(fields=["organization", "timestamp"], name="batchrun_org_time")]

    def __str__(self) -> str:
        return f"batch {self.batch_id} ({self.batch_size})"


class DirtyHour(models.Model):
    """An hour of one organization whose rollups no longer match its raw events.

    Ingest bumps `version` in the same transaction as the events it stores; the rollup deletes
    the mark only if the version is still the one it read before recomputing, so an event that
    lands during a recompute always leaves the hour dirty for the next run.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    version = models.BigIntegerField(default=1)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "hour"], name="dirty_hour_unique")]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.hour:%Y-%m-%d %H}:00 v{self.version}"


class DirtyDay(models.Model):
    """A UTC day whose daily rollups must be rebuilt from its hourly rollups."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    day = models.DateTimeField()
    version = models.BigIntegerField(default=1)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "day"], name="dirty_day_unique")]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.day:%Y-%m-%d} v{self.version}"


class RollupSums(models.Model):
    """The figures every rollup row keeps for the events it covers."""

    requests = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost = MoneySumField(default=0)
    errors = models.BigIntegerField(default=0)
    cache_hits = models.BigIntegerField(default=0)
    unpriced = models.BigIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0)
    ttft_sum_ms = models.FloatField(default=0)
    ttft_count = models.BigIntegerField(default=0)
    latency_sketch = models.JSONField(default=dict)

    class Meta:
        abstract = True

    @property
    def cache_misses(self) -> int:
        return self.requests - self.cache_hits


class Rollup(RollupSums):
    """Totals of the events of one bucket (hour or day), at one of three grains.

    - Team-total rows (`is_team_total`), summing all users: hourly per team and model, daily per
      team, model and query type. Organization, team and model views read these.
    - Per-user rows (daily only): per team and user, sums (`model` and `query_type` empty, no
      latency sketch) and each model's share in `by_model`. Users tables (filtered by model or
      not), top users and user budgets read these; a view of one user broken down by model or
      latency reads that user's raw events.

    Coarse grains keep the rollup to a few rows per hundred events.
    """

    # Rollup rows are derived data, rewritten by the thousand per rollup transaction: their foreign
    # keys are no database constraints (a deferred check per row and key costs the rollup about as
    # much as writing the row) and have no index of their own (the unique constraint and the read
    # index start with the organization; deleting a team or organization cascades in the ORM).

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    team = models.ForeignKey(
        Team, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    model = models.CharField(max_length=200, blank=True)
    user_id = models.CharField(max_length=255, blank=True)
    query_type = models.CharField(max_length=100, blank=True, help_text="Set on daily team-total rows only.")
    by_model = models.JSONField(
        default=dict, blank=True, help_text="Per-user rows: {model: [requests, total tokens, cost in 1e-10 USD]}."
    )
    is_team_total = models.BooleanField(default=False)
    start = models.DateTimeField()

    class Meta:
        abstract = True


class HourlyRollup(Rollup):
    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "start", "team", "model", "user_id", "query_type", "is_team_total"],
                name="hourly_rollup_unique",
            )
        ]
        indexes = [models.Index(fields=["organization", "is_team_total", "start"], name="hourly_org_total_start")]

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H}:00 {self.model} {self.cost}"


class DailyRollup(Rollup):
    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "start", "team", "model", "user_id", "query_type", "is_team_total"],
                name="daily_rollup_unique",
            )
        ]
        indexes = [models.Index(fields=["organization", "is_team_total", "start"], name="daily_org_total_start")]

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d} {self.model} {self.cost}"


class TeamTotal(RollupSums):
    """All events of one team in one bucket (every model, user and query type together).

    Unfiltered and team-filtered reads (totals, the time series, latency percentiles, budgets) read
    these: one row per team and bucket, so a 30-day view merges a few hundred small sketches
    whatever the number of models, users or events. Filters on model or user read `Rollup` rows.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    team = models.ForeignKey(
        Team, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    start = models.DateTimeField()

    class Meta:
        abstract = True


class HourlyTeamTotal(TeamTotal):
    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "start", "team"], name="hourly_team_total_unique")
        ]

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H}:00 team {self.team_id} {self.cost}"


class DailyTeamTotal(TeamTotal):
    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "start", "team"], name="daily_team_total_unique")
        ]

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d} team {self.team_id} {self.cost}"


class JobFailure(models.Model):
    """A background job's unit of work (one organization's rollups, one budget, one alert...) that
    failed: logged, counted here for platform admins and Prometheus, and retried after `retry_at`
    while the job goes on with everything else. Kept after it succeeds again (`resolved_at`), so
    `total_failures` only grows."""

    job = models.CharField(max_length=64)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200, blank=True, help_text="What failed within the job, e.g. a budget id.")
    consecutive_failures = models.PositiveIntegerField(default=0)
    total_failures = models.BigIntegerField(default=0)
    first_failed_at = models.DateTimeField(default=timezone.now)
    last_failed_at = models.DateTimeField(default=timezone.now)
    retry_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "organization", "key"], name="job_failure_unique"),
        ]
        indexes = [models.Index(fields=["job", "resolved_at"], name="job_failure_open")]

    def __str__(self) -> str:
        state = "resolved" if self.resolved_at else f"failing x{self.consecutive_failures}"
        return f"{self.job} org={self.organization_id} {self.key} ({state})"


class RepriceRequest(models.Model):
    """A repricing of the events a price change may have re-priced: the work, then its record.

    Written in the transaction that changes the price, so the work lives in the database, not
    only in the task queue: a repricing lost with the queue (Redis restarted, the broker
    unreachable when the price was saved, a worker killed) is found again by the periodic sweep,
    which takes only unfinished ones. Once every organization's events in the window are
    repriced, `finished_at` is set and the row stays as the run's record: how many events
    changed and what they cost before and after (summed over every attempt).
    """

    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="+", db_index=False,
        help_text="Whose price list changed (empty: a platform price, every organization's events).",
    )
    reason = models.CharField(
        max_length=300, blank=True, help_text="What changed, e.g. “override openai/gpt-4o created”."
    )
    provider = models.CharField(max_length=64, blank=True, help_text="Empty: every provider.")
    model = models.CharField(max_length=200, blank=True, help_text="Empty: every model (of the provider).")
    start = models.DateTimeField()
    end = models.DateTimeField(null=True, blank=True)
    organization_ids = models.JSONField(
        null=True, blank=True, help_text="Only these organizations' events are left to reprice (null: all)."
    )
    attempts = models.PositiveIntegerField(default=0)
    not_before = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    events_changed = models.PositiveBigIntegerField(default=0, help_text="Events whose cost or price changed.")
    cost_before = MoneySumField(default=0, help_text="What the changed events cost before (USD).")
    cost_after = MoneySumField(default=0, help_text="What they cost after (USD).")
    finished_at = models.DateTimeField(null=True, blank=True, help_text="Empty: still to run (or retrying).")

    class Meta:
        indexes = [
            models.Index(fields=["not_before"], condition=models.Q(finished_at__isnull=True),
                         name="reprice_unfinished"),
            models.Index(fields=["organization", "-created_at"], name="reprice_runs_of_org"),
        ]  # fmt: skip

    def __str__(self) -> str:
        scope = "/".join(part for part in (self.provider, self.model) if part) or "every model"
        return f"reprice {scope} from {self.start:%Y-%m-%d %H:%M}"


class SpendAnomaly(models.Model):
    """One closed hour in which a team spent well above its baseline (see metrics.anomalies).

    The unique (team, hour) row is the lock: however many detection runs look at an hour, it is
    recorded once, and whatever alerts on it (billing's alerting) reads it once.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField(help_text="Start of the hour (UTC).")
    spend_usd = MoneySumField()
    baseline_median_usd = MoneySumField(help_text="Median spend of the same hour on the previous 7 days.")
    baseline_mad_usd = MoneySumField(help_text="Median absolute deviation of those 7 hours.")
    threshold_usd = MoneySumField(help_text="The spend above which the hour counted as an anomaly.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "hour"], name="one_anomaly_per_team_hour")]
        indexes = [models.Index(fields=["organization", "hour"], name="anomaly_org_hour")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 team {self.team_id} {self.spend_usd}"
