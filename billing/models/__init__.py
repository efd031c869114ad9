"""billing's models: prices (the pricing part); budgets and notification channels (the budgets part)."""

from .budgets import Budget, BudgetAlert, default_thresholds
from .channels import EVENT_TYPES, NotificationChannel, NotificationDelivery
from .early_alerts import BudgetForecastAlert, SpendAnomalyAlert
from .prices import EPOCH, PRICE_BOUNDS, ModelPrice, OrganizationDiscount, OrganizationPrice
from .reservations import BudgetLedger, Reservation, ReservationHold

__all__ = [
    "EPOCH", "EVENT_TYPES", "PRICE_BOUNDS", "Budget", "BudgetAlert", "BudgetForecastAlert", "BudgetLedger",
    "ModelPrice", "NotificationChannel", "NotificationDelivery", "OrganizationDiscount", "OrganizationPrice",
    "Reservation", "ReservationHold", "SpendAnomalyAlert", "default_thresholds",
]
