"""The relay's pure core: decisions and value objects, no I/O, no asyncio."""
