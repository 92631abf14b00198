"""Infrastructure: where a deployment's locks live (`coordination`), the lock backends
(`locks`) and the one JSON log format (`logs`).
"""
