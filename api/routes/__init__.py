"""The OCI distribution endpoints: one module per resource, matched by api.routes.router."""
