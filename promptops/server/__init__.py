"""The HTTP server: API, dashboard, auth, metrics."""
