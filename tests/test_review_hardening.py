"""The review server under a hostile or careless network (real uvicorn on loopback):
body limits before reading, no file content in errors, links out of the dataset, TLS,
gold items that look like any other, one rule for names."""

from __future__ import annotations

import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from click.testing import CliRunner
from corpus import photo
from PIL import Image
from test_review_api import GOLD, PRIORITY, make_dataset, review_server

from veil.cli import main
from veil.datasets import open_dataset
from veil.review.guard import MAX_BODY_BYTES
from veil.review.server import build, running
from veil.review.settings import ReviewSettings
from veil.store import FaceStore
from veil.store.review import ReviewLedger

SECRET = "root:x:0:0:root:/root:/bin/bash\n"


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


def raw_request(url: str, head: str, timeout: float = 5.0) -> str:
    """Send only ``head`` (request line and headers, no body) and read the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        got = b""
        try:
            while chunk := sock.recv(65536):  # the server closes after refusing
                got += chunk
        except TimeoutError:
            if not got:
                return "(no answer: the server is waiting for the body)"
        return got.decode("latin-1")


# -- 10. body size and authentication before reading ----------------------------------------


def test_an_oversized_body_is_refused_from_its_length_before_it_is_read(dataset_root, tmp_path):
    with review_server(dataset_root, str(tmp_path / "f.sqlite")) as (server, _):
        answer = raw_request(server.url, (
            "POST /api/items/crowd/a.jpg/review HTTP/1.1\nHost: 127.0.0.1\n"
            "Content-Type: application/json\nContent-Length: 50000000\n"))
    assert answer.startswith("HTTP/1.1 413"), answer
    assert f"over the limit of {MAX_BODY_BYTES:,} bytes" in answer


def test_a_stranger_is_refused_before_the_body_is_read(dataset_root, tmp_path):
    with review_server(dataset_root, str(tmp_path / "f.sqlite"), tokens=("alice",),
                       require_tokens=True) as (server, _):
        answer = raw_request(server.url, (
            "POST /api/items/crowd/a.jpg/review HTTP/1.1\nHost: 127.0.0.1\n"
            "Content-Type: application/json\nContent-Length: 4000\n"))
        assert answer.startswith("HTTP/1.1 401"), answer
        assert "personal link" in answer
        answer = raw_request(server.url, (
            "POST /api/items/crowd/a.jpg/review HTTP/1.1\nHost: 127.0.0.1\n"
            "Authorization: Bearer not-a-token\nContent-Length: 4000\n"))
        assert answer.startswith("HTTP/1.1 401") and "unknown or revoked token" in answer


def test_a_chunked_body_is_cut_off_at_the_limit(dataset_root, tmp_path):
    def chunks() -> Any:
        for _ in range(2 * MAX_BODY_BYTES // 65536 + 1):
            yield b" " * 65536

    with review_server(dataset_root, str(tmp_path / "f.sqlite"), tokens=("alice",)) as (
            server, tokens), server.client(tokens["alice"]) as c:
        r = c.post("/api/items/crowd/a.jpg/review", content=chunks(),
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "over the limit" in r.json()["detail"]
        assert c.post("/api/items/crowd/a.jpg/review", json={"boxes": []}).status_code == 200
    assert server.store.reviews("crowd/a.jpg")[0].annotator == "alice"


# -- 11. no file content over HTTP; links out of the dataset ---------------------------------


def test_unreadable_files_and_links_out_of_the_dataset_never_show_their_content(
        dataset_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text(SECRET)
    Image.fromarray(photo(60, 40, seed=9)).save(outside / "real.png")
    os.symlink(outside / "passwd", dataset_root / "crowd/x.jpg")
    os.symlink(outside / "real.png", dataset_root / "crowd/linked.png")
    (dataset_root / "crowd/broken.jpg").write_text("secret-notes: do not share")
    with review_server(dataset_root, str(tmp_path / "f.sqlite")) as (server, _), \
            server.client() as c:
        for key in ("crowd/x.jpg", "crowd/broken.jpg", "crowd/linked.png"):
            for path in (f"/api/items/{key}", f"/api/images/{key}"):
                r = c.get(path)
                assert r.status_code == 422, (path, r.status_code)
                assert r.json()["detail"] == (
                    "cannot read this image (the review server's log says why)")
                assert "root:" not in r.text and "secret" not in r.text
    with review_server(dataset_root, str(tmp_path / "g.sqlite"), follow_links=True) as (
            server, _), server.client() as c:
        assert c.get("/api/images/crowd/linked.png").status_code == 200, (
            "--follow-links serves a link out of the dataset")
        assert "root:" not in c.get("/api/items/crowd/x.jpg").text


# -- 12. TLS, and a warning for plain HTTP beyond loopback -------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append(kw))
    return calls


def test_tls_files_reach_uvicorn_and_plain_http_beyond_loopback_is_warned(dataset_root,
                                                                         tmp_path, served):
    store = str(tmp_path / "f.sqlite")
    with FaceStore(store) as opened:
        ReviewLedger(opened).add_annotator("alice")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert"), key.write_text("key")
    runner = CliRunner()
    plain = runner.invoke(main, ["review", str(dataset_root), "--store", store,
                                 "--host", "0.0.0.0"])
    assert plain.exit_code == 0, plain.output
    assert "serving 0.0.0.0 over plain HTTP" in plain.stderr and "--ssl-certfile" in plain.stderr
    tls = runner.invoke(main, ["review", str(dataset_root), "--store", store, "--host",
                               "0.0.0.0", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)])
    assert tls.exit_code == 0, tls.output
    assert "plain HTTP" not in tls.stderr
    assert (served[1]["ssl_certfile"], served[1]["ssl_keyfile"]) == (str(cert), str(key))
    assert served[0]["ssl_certfile"] is None
    local = runner.invoke(main, ["review", str(dataset_root), "--store", store])
    assert local.exit_code == 0 and "plain HTTP" not in local.stderr, "loopback stays quiet"
    half = runner.invoke(main, ["review", str(dataset_root), "--store", store,
                                "--ssl-certfile", str(cert)])
    assert half.exit_code == 2 and "--ssl-keyfile go together" in half.output
    assert len(served) == 3


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    crypto = pytest.importorskip("cryptography")
    del crypto
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_uvicorn_serves_the_review_over_https_with_the_given_files(dataset_root, tmp_path):
    cert, key = self_signed(tmp_path)
    with FaceStore(tmp_path / "f.sqlite") as store:
        token = ReviewLedger(store).add_annotator("alice")
        _, app = build(open_dataset(dataset_root), store, ReviewSettings(), host="127.0.0.1",
                       require_tokens=True)
        with running(app, ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
            assert url.startswith("https://")
            trust = ssl.create_default_context(cafile=str(cert))
            with httpx.Client(base_url=url, verify=trust, timeout=10) as c:
                r = c.get("/api/session", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200 and r.json()["annotator"] == "alice"
            with pytest.raises(httpx.HTTPError):
                httpx.get(url.replace("https", "http") + "/api/session", timeout=5)


# -- 13. gold items look like any other ------------------------------------------------------


def test_cursors_are_opaque_so_gold_items_cannot_be_told_apart(dataset_root, tmp_path):
    with review_server(dataset_root, str(tmp_path / "f.sqlite"), gold_rate=0.5) as (
            server, _):
        # The gold draws are seeded by the server's secret: a fixed one makes them the same
        # every run (a random one served no gold in 5 draws one run in 32).
        server.service.secret = "a fixed secret that serves gold"
        server.ledger.set_gold(GOLD, source="test")
        server.service.refresh()
        with server.client() as c:
            items, after = [], None
            while (item := c.get("/api/next", params={"after": after} if after else {}).json()[
                    "item"]) and len(items) < 40:
                items.append(item)
                after = item["cursor"]
                if item["key"] in GOLD:  # answer it, as a reviewer would
                    c.post(f"/api/items/{item['key']}/review", json={"boxes": []})
    keys = [i["key"] for i in items]
    assert [k for k in keys if k not in GOLD] == PRIORITY, "every image once, in order"
    assert any(k in GOLD for k in keys), "gold was served"
    cursors = [i["cursor"] for i in items]
    assert len(set(cursors)) == len(cursors), "a cursor never repeats an earlier one"
    assert not set(cursors) & set(keys) and all(len(c) == len(cursors[0]) for c in cursors)
    gold = [i for i in items if i["key"] in GOLD]
    normal = [i for i in items if i["key"] not in GOLD and i["origin"] == "detections"]
    fields = {k for k in gold[0] if k not in ("key", "width", "height", "boxes", "cursor")}
    assert {k: gold[0][k] for k in fields} == {k: normal[0][k] for k in fields}


# -- 14. one rule for people's names -----------------------------------------------------------


def test_import_faces_refuses_an_annotator_name_that_add_annotator_refuses(tmp_path):
    faces = tmp_path / "faces.json"
    faces.write_text(json.dumps([{"url": "a.jpg", "bboxes": []}]))
    store = str(tmp_path / "f.sqlite")
    FaceStore(store).close()
    runner = CliRunner()
    for name in ("<b>eve</b>", "veil:restore", "a b"):
        r = runner.invoke(main, ["import-faces", str(faces), "--store", store,
                                 "--annotator", name])
        assert r.exit_code == 2 and "annotator name" in r.output, (name, r.output)
        added = runner.invoke(main, ["review", "add-annotator", name, "--store", store])
        assert added.exit_code != 0 and "annotator name" in added.output
    ok = runner.invoke(main, ["import-faces", str(faces), "--store", store,
                              "--annotator", "eve.lab"])
    assert ok.exit_code == 0, ok.output
    with FaceStore(store) as opened:
        assert [r.annotator for r in opened.reviews("a.jpg")] == ["eve.lab"]
