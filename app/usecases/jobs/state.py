"""Job statuses."""

ACTIVE = ("running", "pausing", "cancelling")
TERMINAL = ("succeeded", "failed", "cancelled")
