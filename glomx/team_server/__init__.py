"""The team's MLflow tracking server: PostgreSQL backend store, proxied artifacts
(:mod:`glomx.team_server.main`, run by ``make server``). No pipeline stage imports this package."""
