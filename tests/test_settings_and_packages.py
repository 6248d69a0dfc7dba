import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from billing.packages import parse_packages
from config.settings import database_from_url

ROOT = Path(__file__).resolve().parent.parent


def test_mysql_urls_use_mysqlclient_utf8mb4_strict_and_read_committed():
    for url in ("mysql://root@127.0.0.1:3306/test", "mysql+pymysql://root@127.0.0.1:3306/test"):
        config = database_from_url(url)
        assert config["ENGINE"] == "django.db.backends.mysql"
        assert (config["NAME"], config["HOST"], config["PORT"], config["USER"]) == ("test", "127.0.0.1", 3306, "root")
        options = config["OPTIONS"]
        assert options["charset"] == "utf8mb4"
        assert "STRICT_TRANS_TABLES" in options["init_command"]
        assert options["isolation_level"] == "read committed"


def test_sqlite_url():
    assert database_from_url("sqlite:////tmp/x.sqlite3")["ENGINE"] == "django.db.backends.sqlite3"


def test_the_test_connection_really_is_read_committed_and_strict(db):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT @@SESSION.tx_isolation, @@SESSION.sql_mode, @@character_set_connection")
        isolation, sql_mode, charset = cursor.fetchone()
    assert isolation == "READ-COMMITTED"
    assert "STRICT_TRANS_TABLES" in sql_mode
    assert charset == "utf8mb4"


def _manage(*args, **env):
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120
    )


def test_secret_key_is_required_when_debug_is_off():
    result = _manage("check", DEBUG="false")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_a_malformed_packages_file_stops_start_up_naming_the_problem(tmp_path):
    bad = tmp_path / "packages.json"
    bad.write_text(
        json.dumps(
            [
                {
                    "package_id": "pack_1k",
                    "name": "x",
                    "credits": "lots",
                    "price_cents": 100,
                    "currency": "usd",
                    "stripe_price_id": None,
                }
            ]
        )
    )
    result = _manage("check", SECRET_KEY="x", BILLING_PACKAGES_FILE=str(bad))
    assert result.returncode != 0
    assert "package 'pack_1k': credits must be a positive integer" in result.stderr


VALID = {
    "package_id": "pack_1k",
    "name": "1k",
    "credits": 1000,
    "price_cents": 1000,
    "currency": "usd",
    "stripe_price_id": None,
}


@pytest.mark.parametrize(
    "data, message",
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        (json.dumps([{**VALID, "credits": 0}]), "credits must be a positive integer"),
        (json.dumps([{**VALID, "credits": 10.5}]), "credits must be a positive integer"),
        (json.dumps([{**VALID, "price_cents": -1}]), "price_cents must be a positive integer"),
        (json.dumps([{**VALID, "currency": "USD"}]), "currency"),
        (json.dumps([{**VALID, "stripe_price_id": "prod_1"}]), "stripe_price_id"),
        (json.dumps([VALID, VALID]), "duplicate package_id"),
        (json.dumps([{k: v for k, v in VALID.items() if k != "name"}]), "missing field(s) name"),
        (json.dumps([{**VALID, "bonus": 1}]), "unknown field(s) bonus"),
        (json.dumps([{**VALID, "package_id": "Pack 1"}]), "package_id must be a lowercase slug"),
    ],
)
def test_package_validation_names_the_problem(data, message):
    with pytest.raises(ImproperlyConfigured, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_packages(data)


def test_the_shipped_packages_file_is_valid():
    packages = parse_packages((ROOT / "billing" / "credit_packages.json").read_text())
    assert len(packages) >= 3


def test_env_example_documents_every_setting_the_code_reads():
    import re

    sources = [ROOT / "config" / "settings.py", *ROOT.glob("*/management/commands/*.py")]
    read = set()
    for source in sources:
        text = source.read_text()
        read |= set(re.findall(r'env\.\w+\(\s*"([A-Z0-9_]+)"', text))
        read |= set(re.findall(r'os\.environ\.get\(\s*"([A-Z0-9_]+)"', text))
    documented = set(re.findall(r"^#?\s?([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert read, "no settings found"
    assert read - documented == set()
