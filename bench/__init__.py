"""The benchmark: the relay against Postfix doing the same job (`python -m bench`)."""
