"""The OCI referrers relation: which manifests in a repository name another as `subject`.

Recorded when a manifest with a `subject` is committed, as a link in Lading's own part of
the repository (distribution never looks there):

    _lading/referrers/<subject alg>/<subject hex>/<referrer alg>/<referrer hex>/link

Listing reads each referrer manifest back, so a referrer deleted since is simply absent.
"""

from __future__ import annotations

from pipeline.errors import ManifestInvalid, ManifestUnknown, PathNotFound
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import Descriptor, parse_manifest
from pipeline.storage import paths
from pipeline.storage.driver import StorageDriver
from pipeline.stores.digest_dirs import digests_in
from pipeline.stores.manifests import ManifestStore


class Referrers:
    """Referrer links of every repository on a driver, resolved through `manifests`."""

    def __init__(self, driver: StorageDriver, manifests: ManifestStore) -> None:
        self.driver = driver
        self.manifests = manifests

    def add(self, repo: str, subject: Digest, referrer: Digest) -> None:
        """Record that `referrer` names `subject` (idempotent)."""
        self.driver.put_content(paths.referrer_link(repo, subject, referrer), str(referrer).encode("ascii"))

    def remove(self, repo: str, subject: Digest, referrer: Digest) -> None:
        """Forget the link; removing one that is not there is not an error."""
        link = paths.referrer_link(repo, subject, referrer)
        try:
            self.driver.delete(link.rsplit("/", 1)[0])
        except PathNotFound:
            pass

    def _linked(self, repo: str, subject: Digest) -> list[Digest]:
        return list(digests_in(self.driver, paths.referrers_dir(repo, subject)))

    def _describe(self, repo: str, digest: Digest) -> Descriptor | None:
        try:
            body, media_type = self.manifests.get(repo, digest)
            manifest = parse_manifest(body, media_type)
        except (ManifestUnknown, ManifestInvalid):
            return None
        artifact_type = manifest.artifact_type
        if artifact_type is None and manifest.config is not None:
            artifact_type = manifest.config.media_type
        return Descriptor(
            media_type=manifest.media_type,
            digest=digest,
            size=len(body),
            artifact_type=artifact_type,
            annotations=dict(manifest.annotations),
        )

    def list(self, repo: str, subject: Digest, artifact_type: str | None = None) -> list[Descriptor]:
        """Descriptors of every referrer of `subject` still present in `repo`, ordered by
        digest; only those whose artifact type equals `artifact_type` when it is given."""
        out: list[Descriptor] = []
        for digest in sorted(self._linked(repo, subject), key=str):
            desc = self._describe(repo, digest)
            if desc is None:
                continue
            if artifact_type is not None and desc.artifact_type != artifact_type:
                continue
            out.append(desc)
        return out
