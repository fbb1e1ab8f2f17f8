"""``python -m producer_tools bench``: the system against its limits and the usual approaches."""
