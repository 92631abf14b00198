"""Infrastructure: where a deployment's locks live (`coordination`), the lock backends
(`locks`), the one JSON log format (`logs`) and TLS contexts (`tls`).
"""
