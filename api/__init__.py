"""HTTP side of Lading: the OCI Distribution API over ASGI. Sends jobs by name."""
