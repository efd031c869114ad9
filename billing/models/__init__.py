"""billing's models: prices (the pricing part) and budgets (the budgets part)."""

from .budgets import Budget, BudgetAlert, default_thresholds
from .prices import EPOCH, PRICE_BOUNDS, ModelPrice, OrganizationDiscount, OrganizationPrice
from .reservations import BudgetLedger, Reservation, ReservationHold

__all__ = [
    "EPOCH", "PRICE_BOUNDS", "Budget", "BudgetAlert", "BudgetLedger", "ModelPrice", "OrganizationDiscount",
    "OrganizationPrice", "Reservation", "ReservationHold", "default_thresholds",
]
