"""The team's MLflow tracking server: PostgreSQL backend store, proxied artifacts
(:mod:`glomx.server.main`, run by ``make server``). No pipeline stage imports this package."""
