"""The supervisor: REST discovery, planning, worker lifecycle, limiter policy, the public API."""
