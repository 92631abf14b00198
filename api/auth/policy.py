"""The access policy in force: the policy file (reloaded when it changes) or the default.

The rules themselves live in `pipeline.auth.policy`; this module only decides where they come
from: `auth.policy_path` if set, else `pipeline.auth.policy.default_policy` (authenticated
users may do everything; anonymous callers pull everything with `anonymous_pull`).
"""

from __future__ import annotations

import functools

from api.auth.watch import WatchedFile
from pipeline.auth.policy import Policy, default_policy, load_policy
from pipeline.config import AuthSettings
from pipeline.errors import ConfigurationError

POLICY_KEY = "lading.auth.policy"


class PolicySource:
    """Hands out the current `Policy`."""

    def __init__(self, path: str = "", *, anonymous_pull: bool = False) -> None:
        self.path = path
        self._fixed: Policy | None = None
        self._file: WatchedFile[Policy] | None = None
        if path:
            try:
                self._file = WatchedFile(path, functools.partial(load_policy, anonymous_pull=anonymous_pull))
            except OSError as exc:
                raise ConfigurationError(POLICY_KEY, f"{POLICY_KEY}: cannot read {path}: {exc}") from exc
        else:
            self._fixed = default_policy(anonymous_pull)

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> PolicySource:
        return cls(auth.policy_path, anonymous_pull=auth.anonymous_pull)

    @property
    def watched(self) -> WatchedFile[Policy] | None:
        return self._file

    def current(self) -> Policy:
        if self._file is not None:
            return self._file.get()
        assert self._fixed is not None
        return self._fixed
