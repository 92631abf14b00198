"""GET /v2/<name>/referrers/<digest> (end-12a/12b): the manifests whose `subject` is <digest>.

Always 200 with an OCI image index (`application/vnd.oci.image.index.v1+json`), empty when
nothing refers to the digest, the subject does not exist or the repository is unknown: the
spec forbids a 404 here. `?artifactType=` filters, and the answer then says so with
`OCI-Filters-Applied: artifactType`. A malformed digest is a 400 DIGEST_INVALID.
"""

from __future__ import annotations

import json

from starlette.responses import Response

from api.query import single_or_none
from api.routes.context import RequestContext
from pipeline.errors import NameUnknown
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import OCI_INDEX, Descriptor
from pipeline.registry import Registry


def _list(registry: Registry, name: str, subject: Digest, artifact_type: str | None) -> list[Descriptor]:
    try:
        return registry.referrers.list(name, subject, artifact_type)
    except NameUnknown:
        return []


async def list_referrers(ctx: RequestContext) -> Response:
    subject = Digest.parse(ctx.params["digest"])
    # An ambiguous filter is not applied (no OCI-Filters-Applied): the client filters.
    artifact_type = single_or_none(ctx.request.query_params, "artifactType") or None
    found = await ctx.blocking(_list, ctx.registry, ctx.name, subject, artifact_type)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d.to_json() for d in found]}
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    body = json.dumps(index, separators=(",", ":")).encode()
    return Response(body, headers=headers, media_type=OCI_INDEX)
