"""The admin HTTP server (aiohttp): health, readiness, metrics; the API comes in a later issue."""
