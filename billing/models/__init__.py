"""billing's models: prices (the pricing part) and budgets (the budgets part)."""

from .budgets import Budget, BudgetAlert, default_thresholds
from .early_alerts import BudgetForecastAlert, SpendAnomalyAlert
from .prices import EPOCH, PRICE_BOUNDS, ModelPrice, OrganizationDiscount, OrganizationPrice

__all__ = [
    "EPOCH", "PRICE_BOUNDS", "Budget", "BudgetAlert", "BudgetForecastAlert", "ModelPrice", "OrganizationDiscount",
    "OrganizationPrice", "SpendAnomalyAlert", "default_thresholds",
]
