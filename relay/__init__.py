"""relay: a self-hosted SMTP relay for many sites."""

__version__ = "0.1.0"
