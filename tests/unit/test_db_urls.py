"""Database URLs as users paste them → the engine Loopdeck builds."""

import pytest

from shared.db import make_engine, normalize_url
from shared.errors import ConfigError
from shared.settings import Settings


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql://h/db?sslmode=require", "postgresql+psycopg://h/db?sslmode=require"),
        ("postgresql+psycopg://h/db", "postgresql+psycopg://h/db"),
        ("libsql://db-org.turso.io?authToken=T", "sqlite+libsql://db-org.turso.io/?authToken=T&secure=true"),
        ("libsql://127.0.0.1:8080?tls=0", "sqlite+libsql://127.0.0.1:8080/?secure=false"),
        ("http://127.0.0.1:8080", "sqlite+libsql://127.0.0.1:8080/?secure=false"),
        ("http://127.0.0.1:8080/?timeout=2", "sqlite+libsql://127.0.0.1:8080/?timeout=2&secure=false"),
        ("https://db.example.com", "sqlite+libsql://db.example.com/?secure=true"),
        ("libsql:///var/lib/loopdeck.db", "sqlite:////var/lib/loopdeck.db"),
        ("file:/var/lib/loopdeck.db", "sqlite:////var/lib/loopdeck.db"),
        ("sqlite:///./loopdeck.db", "sqlite:///./loopdeck.db"),
    ],
)  # fmt: skip
def test_normalize_url(given, expected):
    assert normalize_url(given) == expected


def test_a_libsql_url_makes_a_pooled_http_engine_with_the_token():
    engine = make_engine("libsql://db-org.turso.io?authToken=secret")
    try:
        assert (engine.dialect.name, engine.dialect.driver) == ("sqlite", "libsql")
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        assert args == ["https://db-org.turso.io"] and kwargs["auth_token"] == "secret"
    finally:
        engine.dispose()


def test_null_pool_setting_reaches_every_backend():
    from sqlalchemy.pool import NullPool

    for url in ("postgresql://h/db", "http://127.0.0.1:1"):
        engine = make_engine(url, Settings(db_pool="null"))
        try:
            assert isinstance(engine.pool, NullPool), url
        finally:
            engine.dispose()


def test_unknown_libsql_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="unknown libsql URL parameter"):
        make_engine("http://127.0.0.1:1/?bogus=1")


def test_unsupported_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="unsupported database URL scheme"):
        make_engine("mysql://h/db")
