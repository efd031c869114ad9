"""What the pricing part of billing announces to the layers above it (it imports none of them)."""

from django.dispatch import Signal

# Sent inside the transaction that changes a price row (saved, added, deleted, synced), with
# `provider`, `model`, `start` and `end` (None: open-ended): the window of events that row governs
# or governed. Receivers that must not lose the change (metrics records a reprice request) write in
# that same transaction; work for after the commit they queue with `transaction.on_commit`.
price_changed = Signal()
