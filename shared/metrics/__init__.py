"""Service-wide numbers for `/metrics`."""
