"""billing's pricing part: money, prices, the price book, the catalog and the cost of an event.

The bottom layer above `teams`: it imports nothing from `metrics` nor from billing's budgets
part. What the layers above must know of it, it announces with `price_changed`.
"""

from django.dispatch import Signal

# What pricing announces to the layers above it (it imports none of them). Sent inside the
# transaction that changes a price row (saved, added, deleted, synced, or an organization's
# override or discount created, changed, ended or deleted), with:
#   provider, model: what the change covers ("" = any: a discount for every model of a provider,
#                    or for everything);
#   start, end:      the window of events that row governs or governed (end None: open-ended);
#   organization_id: whose events (None: a platform price, every organization's);
#   reason:          a short label for the run record ("override acme openai/gpt-4o changed").
# Receivers that must not lose the change (metrics records a reprice request) write in that same
# transaction; work for after the commit they queue with `transaction.on_commit`.
price_changed = Signal()
