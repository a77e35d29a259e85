"""What `glomx server` says before anything runs: missing PostgreSQL, missing user, the URI."""

from __future__ import annotations

from pathlib import Path

import pytest

from glomx.team_server.postgres import ROLE, Postgres, PostgresError, pg_bin, server_user


def test_a_missing_program_names_it_and_the_install_command() -> None:
    with pytest.raises(PostgresError, match=r"`pg_nothing` .*`apt-get install -y postgresql`"):
        pg_bin("pg_nothing")


def test_a_missing_user_is_named_with_the_fix() -> None:
    with pytest.raises(PostgresError, match=r"'glomx-no-such-user' does not exist.*useradd"):
        server_user("glomx-no-such-user")


def test_the_store_uri_and_connection_carry_no_password(tmp_path: Path) -> None:
    postgres = Postgres(tmp_path, port=6543)
    assert postgres.sqlalchemy_uri("mlflow") == f"postgresql+psycopg://{ROLE}@127.0.0.1:6543/mlflow"
    assert "password" not in postgres.connection("mlflow")
    assert postgres.connection("mlflow")["passfile"] == str(tmp_path / "pgpass")
    assert not postgres.initialised()
