"""Helpers shared by integration and end-to-end tests: image building, servers, clients."""
