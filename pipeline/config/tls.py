"""distribution's `http.tls` as an `ssl.SSLContext` for the registry's listener.

distribution names cipher suites the Go way (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`);
OpenSSL, under Python's `ssl`, has its own names for the same suites. `GO_CIPHER_SUITES`
maps one to the other. As in Go, TLS 1.3 suites cannot be restricted: naming them is
accepted and changes nothing. Suites Python's OpenSSL no longer offers (RC4) are refused at
start, like any key Lading cannot honour: serving with weaker or different settings than
the operator wrote is worse than not starting.
"""

from __future__ import annotations

import ssl

from pipeline.config.settings import TlsSettings
from pipeline.errors import ConfigurationError

__all__ = ["GO_CIPHER_SUITES", "TLS13_SUITES", "TLS_VERSIONS", "server_context"]

# Go's crypto/tls name → OpenSSL's name, for TLS 1.0-1.2 suites.
GO_CIPHER_SUITES: dict[str, str] = {
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})
TLS_VERSIONS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}


def openssl_ciphers(go_names: tuple[str, ...], key: str = "http.tls.ciphersuites") -> tuple[str, ...]:
    """OpenSSL names of the TLS 1.2 suites among `go_names`; ConfigurationError naming the
    first one that is unknown or that this OpenSSL does not offer."""
    out: list[str] = []
    for name in go_names:
        if name in TLS13_SUITES:
            continue
        openssl = GO_CIPHER_SUITES.get(name)
        if openssl is None:
            raise ConfigurationError(f"{key}: unknown or unsupported cipher suite {name!r}")
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            probe.set_ciphers(openssl)
        except ssl.SSLError:
            raise ConfigurationError(
                f"{key}: cipher suite {name!r} is not available in this OpenSSL ({ssl.OPENSSL_VERSION})"
            ) from None
        out.append(openssl)
    return tuple(out)


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The listener's context for `tls`. ConfigurationError (naming the key) when a file
    cannot be read or a setting cannot be honoured."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.minimum_version]
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"http.tls.certificate/key: cannot load {tls.certificate} with {tls.key}: {exc}"
        ) from None
    ciphers = openssl_ciphers(tls.ciphersuites)
    if ciphers:
        context.set_ciphers(":".join(ciphers))
    elif tls.ciphersuites and tls.minimum_version == "tls1.2":
        # Only TLS 1.3 suites named: Go then has no TLS 1.2 suite left, so only 1.3 works.
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    for path in tls.clientcas:
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"http.tls.clientcas: cannot load {path}: {exc}") from None
    if tls.clientcas:
        context.verify_mode = ssl.CERT_REQUIRED if tls.clientauth == "require" else ssl.CERT_OPTIONAL
    return context
