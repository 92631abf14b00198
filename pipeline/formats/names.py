"""Repository names, tags and references, validated by the OCI distribution-spec grammar.

    name      [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(\\/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*
    tag       [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
    reference tag | digest

Names are limited to 255 characters in total (distribution's limit).
"""

from __future__ import annotations

import re

from pipeline.errors import NameInvalid, TagInvalid
from pipeline.formats.digest import Digest

MAX_NAME_LENGTH = 255
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")


def validate_name(name: str) -> str:
    """Return `name` if it is a valid repository name, else raise NameInvalid."""
    if not name:
        raise NameInvalid("repository name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(f"repository name must not exceed {MAX_NAME_LENGTH} characters")
    if not NAME_RE.fullmatch(name):
        raise NameInvalid(f"invalid repository name {name!r}")
    return name


def is_valid_name(name: str) -> bool:
    return bool(name) and len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def validate_tag(tag: str) -> str:
    """Return `tag` if it matches the tag grammar, else raise TagInvalid."""
    if not TAG_RE.fullmatch(tag):
        raise TagInvalid(f"invalid tag {tag!r}")
    return tag


def is_valid_tag(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None


def is_digest_reference(reference: str) -> bool:
    """True when a manifest reference is a digest (contains ':'), not a tag."""
    return ":" in reference


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference: a Digest, or a validated tag string."""
    if is_digest_reference(reference):
        return Digest.parse(reference)
    return validate_tag(reference)
