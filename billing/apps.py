from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # metrics (below billing's budgets part) imports no budget code: budgets register into it.
        from metrics.ingest_hooks import register_budget_answer, register_events_recorded
        from metrics.prometheus import register_business_section

        from .prometheus import BUDGETS_SECTION
        from .reservations import reservations_settle
        from .selectors import budget_check

        register_budget_answer(budget_check)
        register_business_section(BUDGETS_SECTION)
        register_events_recorded(reservations_settle)
