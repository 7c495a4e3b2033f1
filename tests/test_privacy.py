"""Unit tests of the privacy scanner (no broker): it finds raw ids wherever they hide, and only those."""

from __future__ import annotations

import gzip

import pytest

from fraud.errors import FraudError
from fraud.replay import CardPool
from fraudctl.cli import main
from preprocessing.anonymize import AnonymizeKey, Anonymizer
from preprocessing.privacy import IdScanner, pool_ids, read_ids_file, scan_duckdb, scan_path

POOL = CardPool(50, 11)
IDS = pool_ids(50, 11)
CARD = POOL.cards[3].card_id
CUST = POOL.cards[3].customer_id


def test_pool_ids_are_the_replay_pool():
    assert len([k for k, v in IDS.items() if v == "card_id"]) == 50
    assert {c.customer_id for c in POOL.cards} == {k for k, v in IDS.items() if v == "customer_id"}


def test_scanner_finds_ids_inside_any_bytes_and_nothing_else():
    s = IdScanner(IDS)
    data = b'{"x":"zz' + CARD.encode() + b'99","k":"' + CUST.encode() + b'"}'
    assert s.find(data) == {CARD.encode(), CUST.encode()}
    # overlapping digit runs: the id sits at an odd place inside a longer run
    assert s.find(b"12345" + CARD.encode() + b"678") == {CARD.encode()}
    assert s.find(CARD[:-1].encode() + b"x") == set()
    anon = Anonymizer(AnonymizeKey(b"a" * 32, "t"))
    clean = (anon.pseudonym("card_id", CARD) + anon.pseudonym("customer_id", CUST)).encode()
    assert s.find(clean) == set()
    found = s.findings(data, "here")
    assert {f.kind for f in found} == {"card_id", "customer_id"}
    assert all(CARD not in str(f) and CUST not in str(f) for f in found), "findings never show the raw id"


def test_scanner_without_structure_falls_back_to_windows():
    ids = {"a" + "-" * (i % 9) + "b" + "_" * (i // 9 % 9) + "c": "id" for i in range(81)}  # 81 shapes
    s = IdScanner(ids)
    target = sorted(ids)[17]
    assert s._lengths is not None
    assert s.find(b"..." + target.encode() + b"...") == {target.encode()}
    with pytest.raises(FraudError):
        IdScanner({})


def test_scan_path_reads_directories_and_gzip(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "clean.json").write_bytes(b'{"card_id": "card_abc"}')
    with gzip.open(tmp_path / "a" / "leak.json.gz", "wb") as f:
        f.write(b'{"card_id": "' + CARD.encode() + b'"}')
    n, found = scan_path(tmp_path, IdScanner(IDS))
    assert n == 2 and len(found) == 1 and "leak.json.gz" in found[0].where
    with pytest.raises(FraudError, match="nothing to scan"):
        scan_path(tmp_path / "absent", IdScanner(IDS))


def test_scan_duckdb_reads_every_text_column(tmp_path):
    import duckdb

    db = tmp_path / "w.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE scores (transaction_id VARCHAR, card_id VARCHAR, score DOUBLE)")
    con.execute("INSERT INTO scores VALUES ('tx-1', 'card_x', 0.1), ('tx-2', ?, 0.2)", [CUST])
    con.execute("CREATE TABLE other (n INTEGER)")
    con.close()
    n, found = scan_duckdb(db, IdScanner(IDS))
    assert n == 2 and [f.where for f in found] == ["warehouse scores.card_id"]


def test_ids_file(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text(f"# known ids\ncard_id\t{CARD}\n{CUST}\n\n")
    assert read_ids_file(path) == {CARD: "card_id", CUST: "id"}


def test_cli_exit_code_says_whether_ids_were_found(tmp_path, capsys):
    ok = tmp_path / "ok.log"
    ok.write_text('{"event": "dead_letter", "key": "tx-1"}\n')
    args = ["preprocess", "privacy-check", "--skip-topics", "--cards", "50", "--seed", "11"]
    assert main(args + ["--path", str(ok)]) == 0
    assert f"privacy check passed: none of {len(IDS)} raw ids found" in capsys.readouterr().out
    leak = tmp_path / "leak.log"
    leak.write_text(f'{{"event": "oops", "card": "{CARD}"}}\n')
    assert main(args + ["--path", str(ok), "--path", str(leak)]) == 4
    out = capsys.readouterr().out
    assert "privacy check FAILED: 1 raw ids found" in out and "leak.log" in out and CARD not in out
