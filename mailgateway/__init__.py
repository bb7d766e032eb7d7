"""mailgateway: an email-driven helpdesk gateway.

Customers open and follow support tickets by plain email, technicians answer
from their own mail client, admins steer the flow with rule files.
"""

__version__ = "0.1.0"
