"""The HTTP API through FastAPI's TestClient: every endpoint, every limit, bad files among good ones."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

from fastapi.testclient import TestClient

from topoclass.api import bundled_model_dir
from topoclass.serve.app import create_app
from topoclass.serve.limits import Limits
from topoclass.serve.registry import load_models

EXAMPLES = bundled_model_dir("tqc2020") / "examples"
BI2SE3_CIF = (EXAMPLES / "Bi2Se3.cif").read_bytes()  # 15 atoms in the cell
NACL_CIF = (EXAMPLES / "NaCl.cif").read_bytes()  # 8 atoms
LIMITS = Limits(max_body_bytes=20_000, max_rows=3, max_atoms=10)


@pytest.fixture(scope="module")
def models():
    return load_models(["tang2019", "tqc2020"])


@pytest.fixture(scope="module")
def client(models):
    with TestClient(create_app(models, LIMITS)) as test_client:
        yield test_client


def one_line(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail, detail
    return detail


def test_health_names_the_loaded_models(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "models": ["tang2019", "tqc2020"]}


def test_models_describe_tasks_classes_structures_and_card(client):
    listed = {model["name"]: model for model in client.get("/models").json()}
    assert listed["tang2019"]["tasks"] == ["topological", "topo_class"]
    assert listed["tang2019"]["classes"]["topo_class"] == ["trivial", "TI", "TCI", "semimetal"]
    assert listed["tang2019"]["uses_structures"] is False
    assert listed["tqc2020"]["uses_structures"] is True
    assert listed["tqc2020"]["card"] == "/models/tqc2020/card"


def test_card_as_markdown_and_as_html(client):
    markdown = client.get("/models/tang2019/card")
    assert markdown.status_code == 200
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text == (bundled_model_dir("tang2019") / "model_card.md").read_text()
    page = client.get("/models/tang2019/card?format=html")
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>tang2019" in page.text and "<table>" in page.text
    negotiated = client.get("/models/tang2019/card", headers={"accept": "text/html"})
    assert negotiated.headers["content-type"].startswith("text/html")
    missing = client.get("/models/nothing/card")
    assert missing.status_code == 404 and "nothing" in one_line(missing)


def test_predict_answers_rows_in_order_with_probabilities_and_source(client):
    body = {
        "rows": [{"formula": "NaCl", "spacegroup": 225}, {"formula": "Bi2Se3", "spacegroup": 166, "id": "x"}]
    }
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["model"] == "tang2019" and answer["tasks"] == ["topological", "topo_class"]
    nacl, bi2se3 = answer["rows"]
    assert (nacl["id"], nacl["topo_class"], nacl["skipped"]) == ("NaCl", "trivial", "")
    assert (bi2se3["id"], bi2se3["topo_class"]) == ("x", "TI")
    probabilities = [bi2se3[f"topo_class:p({name})"] for name in ("trivial", "TI", "TCI", "semimetal")]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert bi2se3["topo_class:predictor"] in ("network", "trees", "blend")


def test_predict_with_another_model_and_predictor(client):
    body = {"rows": [{"formula": "Bi2Se3", "spacegroup": 166}], "model": "tqc2020", "predictor": "network"}
    answer = client.post("/predict", json=body).json()
    assert answer["model"] == "tqc2020"
    row = answer["rows"][0]
    assert set(answer["tasks"]) <= set(row)
    assert {row[f"{task}:predictor"] for task in answer["tasks"]} == {"network"}


def test_a_bad_formula_is_skipped_with_its_reason_and_the_others_answered(client):
    body = {"rows": [{"formula": "Xx2", "spacegroup": 1}, {"formula": "Bi2Se3", "spacegroup": 166}]}
    bad, good = client.post("/predict", json=body).json()["rows"]
    assert "Xx2" in bad["skipped"] and bad["topo_class"] is None
    assert good["topo_class"] == "TI" and good["skipped"] == ""
    # Alone, it has every column too (its call predicted nothing: no task columns of its own).
    (alone,) = client.post("/predict", json={"rows": body["rows"][:1]}).json()["rows"]
    assert alone == bad and list(alone) == list(good)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (
            {"rows": [{"formula": "NaCl", "spacegroup": 225}, {"formula": "Bi2Se3", "spacegroup": 231}]},
            "rows[1].spacegroup",
        ),
        ({"rows": [{"spacegroup": 225}]}, "rows[0].formula"),
        ({"rows": [{"formula": "NaCl", "spacegroup": 225, "colour": "red"}]}, "rows[0].colour"),
        ({"rows": []}, "rows"),
        ({"rows": [{"formula": "NaCl", "spacegroup": 225}], "predictor": "oracle"}, "predictor"),
    ],
    ids=["spacegroup", "missing-formula", "unknown-field", "no-rows", "predictor"],
)
def test_invalid_requests_get_one_line_naming_the_field(client, body, where):
    response = client.post("/predict", json=body)
    assert response.status_code == 422
    assert one_line(response).startswith(f"{where}: ")


def test_unknown_model_is_named(client):
    response = client.post(
        "/predict", json={"rows": [{"formula": "NaCl", "spacegroup": 225}], "model": "gpt"}
    )
    assert response.status_code == 422
    assert one_line(response) == "model: 'gpt' is not served here (tang2019, tqc2020)"


def test_too_many_rows_is_413_naming_the_limit(client):
    rows = [{"formula": "NaCl", "spacegroup": 225}] * (LIMITS.max_rows + 1)
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 413
    assert one_line(response) == "rows: 4 in one request, more than the limit of 3 (--max-rows)"


def test_too_large_body_is_413_declared_or_chunked(client):
    padding = "x" * LIMITS.max_body_bytes
    declared = client.post("/predict", json={"rows": [{"formula": padding, "spacegroup": 1}]})
    assert declared.status_code == 413
    assert re.fullmatch(
        r"request body: \d+ bytes, more than the limit of 20000 bytes \(--max-body-bytes\)",
        one_line(declared),
    )

    def chunks():  # no Content-Length: the limit is found while reading
        yield b'{"rows": [{"formula": "'
        for _ in range(30):
            yield b"x" * 1000

    chunked = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "--max-body-bytes" in one_line(chunked)


def test_structures_bad_file_gets_its_reason_and_the_others_are_answered(client):
    files = [
        ("files", ("NaCl.cif", NACL_CIF)),
        ("files", ("broken.cif", b"data_broken\n_cell_length_a 5.6\nnot a cif at all\n")),
        ("files", ("notes.bin", b"\xff\xfe\x00binary")),
    ]
    response = client.post("/predict/structures", files=files, data={"model": "tqc2020"})
    assert response.status_code == 200
    answer = response.json()
    nacl, broken, binary = answer["rows"]
    assert (nacl["id"], nacl["formula"], nacl["spacegroup"], nacl["skipped"]) == ("NaCl.cif", "NaCl", 225, "")
    assert nacl["topo_class"] == "trivial"
    assert broken["id"] == "broken.cif" and "cif" in broken["skipped"]
    assert binary["id"] == "notes.bin" and "not UTF-8" in binary["skipped"]


def test_structure_format_is_sniffed_when_the_name_says_nothing(client):
    from pymatgen.core import Structure

    poscar = Structure.from_str(NACL_CIF.decode(), fmt="cif").to(fmt="poscar")
    response = client.post("/predict/structures", files=[("files", ("upload", poscar.encode()))])
    row = response.json()["rows"][0]
    assert (row["formula"], row["spacegroup"], row["skipped"]) == ("NaCl", 225, "")


def test_structure_over_the_atom_limit_is_422_naming_the_file(client):
    files = [("files", ("NaCl.cif", NACL_CIF)), ("files", ("Bi2Se3.cif", BI2SE3_CIF))]
    response = client.post("/predict/structures", files=files)
    assert response.status_code == 422
    assert one_line(response) == (
        "files[1] 'Bi2Se3.cif': 15 atoms, more than the limit of 10 per structure (--max-atoms)"
    )


def test_too_many_files_is_413(client):
    files = [("files", (f"{i}.cif", NACL_CIF)) for i in range(LIMITS.max_rows + 1)]
    response = client.post("/predict/structures", files=files)
    assert response.status_code == 413 and one_line(response).startswith("files: 4 in one request")


def test_no_files_is_422_naming_the_field(client):
    response = client.post("/predict/structures", data={"model": "tqc2020"})
    assert response.status_code == 422 and one_line(response).startswith("files: ")


def _external(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']?(https?:)?//""", html)


def test_page_and_docs_load_nothing_from_outside(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="formula-form"' in page.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    for html in (page.text, docs.text, client.get("/models/tang2019/card?format=html").text):
        assert not _external(html)
        for asset in re.findall(r"""(?:src|href)=["'](/[^"']+)""", html):
            assert client.get(asset).status_code == 200, asset
    assert "/predict/structures" in client.get("/openapi.json").json()["paths"]


def test_no_batching_answers_the_same(models, client):
    body = {"rows": [{"formula": "Bi2Se3", "spacegroup": 166}, {"formula": "SnTe", "spacegroup": 225}]}
    with TestClient(create_app(models, LIMITS, batching=False)) as unbatched:
        assert unbatched.post("/predict", json=body).json() == client.post("/predict", json=body).json()


def test_a_formula_asked_again_is_answered_as_before_without_a_prediction(models, monkeypatch):
    predictor = models["tang2019"].predictor
    calls = []

    def counted(inputs, **options):
        calls.append(len(inputs.names))
        return type(predictor).answer(predictor, inputs, **options)

    monkeypatch.setattr(predictor, "answer", counted)
    body = {"rows": [{"formula": "Bi2Se3", "spacegroup": 166}]}
    with (
        TestClient(create_app(models, LIMITS)) as cached,
        TestClient(create_app(models, LIMITS, cached_rows=0)) as plain,
    ):
        first = cached.post("/predict", json=body).json()
        again = cached.post("/predict", json={"rows": [{**body["rows"][0], "id": "x"}]}).json()
        assert calls == [1]
        assert again["rows"] == [{**first["rows"][0], "id": "x"}]
        assert plain.post("/predict", json=body).json() == plain.post("/predict", json=body).json() == first
        assert calls == [1, 1, 1]
