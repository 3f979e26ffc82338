"""The public HTTP ingress: landing-page forms and the send API (never the admin listener)."""
