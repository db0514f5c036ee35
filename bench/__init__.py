"""shardctl benchmarks: ``scripts/bench`` (``python -m bench``); see README.md "Benchmarks".

Every figure is a ratio against a reference or limit measured in the same run, or a count
that does not depend on the machine's speed (the machine is shared and noisy).
"""
