from django.dispatch import Signal

# Sent after a pending hold expired and its credits were released; `hold` is the CreditHold.
hold_expired = Signal()

# An auto-recharge attempt was recorded (`attempt_id`) and its transaction committed.
recharge_started = Signal()
