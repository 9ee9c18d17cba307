"""The standing fault suite (``benchmarks/faults.py``): systemd's part, the PLC's part, the faults, the ledger."""
