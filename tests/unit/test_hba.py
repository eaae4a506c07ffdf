"""hba_file parsing and matching (no network)."""

from __future__ import annotations

import pytest

from ithaca.auth.hba import HbaError, HbaRefused, parse_hba

RULES = parse_hba("""
# comment line
local   all           all                        trust
host    all           blocked   0.0.0.0/0        reject
hostssl "my db",other all       127.0.0.1/32     md5
hostnossl all         plain     ::1/128          scram-sha-256
host    sameuser      all       10.0.0.0 255.0.0.0  allow
host    all           alice,bob 192.168.1.0/24   deny
host    all           all       all              trust   # trailing comment
""")


def check(address: str | None = "127.0.0.1", database: str = "db", user: str = "u",
          ssl: bool = False, local: bool = False) -> str:
    return RULES.check(local=local, ssl=ssl, address=address, database=database, user=user)


def test_first_matching_line_wins() -> None:
    assert check(local=True, user="blocked") == "allow"
    with pytest.raises(HbaRefused, match="rejects connection") as info:
        check(user="blocked")
    assert info.value.sqlstate == "28000"
    assert check(database="my db", ssl=True) == "md5"
    assert check(database="other", ssl=True) == "md5"
    assert check(database="other", ssl=False) == "allow"  # falls through to the last line


def test_addresses_and_ssl() -> None:
    assert check(address="::1", user="plain") == "scram-sha-256"
    assert check(address="::1", user="plain", ssl=True) == "allow"
    assert check(address="10.1.2.3", database="x", user="x") == "allow"
    assert check(address="::ffff:127.0.0.1", database="my db", ssl=True) == "md5"
    with pytest.raises(HbaRefused):
        check(address="192.168.1.7", user="bob")
    assert check(address="192.168.2.7", user="bob") == "allow"


def test_no_match_is_refused() -> None:
    rules = parse_hba("host all all 127.0.0.1/32 allow\n")
    with pytest.raises(HbaRefused, match="no hba file entry"):
        rules.check(local=False, ssl=True, address="10.0.0.1", database="d", user="u")
    with pytest.raises(HbaRefused):
        rules.check(local=True, ssl=False, address=None, database="d", user="u")


@pytest.mark.parametrize("line", [
    "hostgssenc all all 127.0.0.1/32 trust",
    "host all all 127.0.0.1/32 password",
    "host all all 127.0.0.1 trust",
    "host all all nonsense/8 trust",
    "host all all",
    "local all all trust extra",
    'host "unterminated all 127.0.0.1/32 trust',
])
def test_bad_lines(line: str) -> None:
    with pytest.raises(HbaError):
        parse_hba(line + "\n", "f.conf")
