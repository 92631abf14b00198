"""Auth: the access policy (who may do what to which repository), failed-login throttling
and the records of issued and revoked tokens. The HTTP side lives in `api.auth`.
"""
