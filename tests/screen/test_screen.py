"""Screening in this process: rows, bad inputs, flags, candidates, resuming, refusals, shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ase.io
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pymatgen.io.ase import AseAtomsAdaptor

from tests.screen.conftest import crystals, fcc, write_folder
from topoclass.errors import ConfigError


def read_rows(out: Path) -> pd.DataFrame:
    return pq.read_table(sorted(out.glob("part-*.parquet"))).to_pandas()


def huge_poscar(path: Path, shape: tuple[int, int, int] = (20, 25, 40)) -> Path:
    """A cell of 20,000 sodium atoms on a grid 3 Å apart, written as POSCAR text."""
    grid = np.stack(np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij"), -1).reshape(-1, 3)
    cell = [" ".join(f"{3.0 * n if i == j else 0.0}" for j in range(3)) for i, n in enumerate(shape)]
    lines = ["huge", "1.0", *cell, "Na", str(len(grid)), "Direct", *(" ".join(map(str, row)) for row in grid)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """Six good CIFs, plus one of each kind of bad input."""
    root = tmp_path_factory.mktemp("inputs")
    folder = write_folder(root / "cifs", 6)
    (folder / "garbage.cif").write_text("data_x\n_cell_length_a oops\n")
    overlapping = fcc(5.6, "Na", "Cl", 0.5)
    overlapping.replace(1, "Cl", [0.01, 0.0, 0.0])
    overlapping.to(filename=str(root / "POSCAR_overlap"))
    huge_poscar(root / "POSCAR_huge")
    frames = root / "frames.xyz"
    ase.io.write(frames, [AseAtomsAdaptor.get_atoms(s) for s in crystals(2)], format="extxyz")
    frames.write_text(frames.read_text() + '0\nLattice="3 0 0 0 3 0 0 0 3" pbc="T T T"\nthree\nx\n')
    xenon = fcc(6.0, "Xe", "F", 0.5)  # no training material had xenon
    xenon.to(filename=str(root / "xenon.cif"))
    return [folder, root / "POSCAR_overlap", root / "POSCAR_huge", frames, root / "xenon.cif"]


@pytest.fixture(scope="module")
def screened(model, inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("screens") / "all"
    model.screen(inputs, out, chunk_size=4, rank=["TI", "topo_class:SM"], top=3)
    return out


def test_every_input_gets_one_row_in_order_with_answers_or_the_reason(screened):
    rows = read_rows(screened)
    assert list(rows["id"]) == [
        "c001", "c002", "c004", "c005", "garbage", "sub/c000", "sub/c003",
        "POSCAR_overlap", "POSCAR_huge", "frames#0", "frames#1", "frames#2", "frames#3", "xenon",
    ]  # fmt: skip
    skipped = dict(zip(rows["id"], rows["skipped"], strict=True))
    assert "not a readable cif" in skipped["garbage"]
    assert "overlap" in skipped["POSCAR_overlap"]
    assert "20000 atoms" in skipped["POSCAR_huge"] and "limit of 2000" in skipped["POSCAR_huge"]
    assert "no atoms" in skipped["frames#2"]
    assert "not an atom count" in skipped["frames#3"]
    answered = rows[rows["skipped"] == ""]
    assert set(answered["id"]) == {
        "c001",
        "c002",
        "c004",
        "c005",
        "sub/c000",
        "sub/c003",
        "frames#0",
        "frames#1",
        "xenon",
    }
    assert set(answered["formula"]) == {"NaCl", "GaAs", "XeF"}
    assert answered["topo_class"].isin(["trivial", "TI", "SM"]).all()
    probabilities = answered[["topo_class:p(trivial)", "topo_class:p(TI)", "topo_class:p(SM)"]].sum(axis=1)
    assert np.allclose(probabilities, 1.0, atol=1e-4)
    assert (answered["topo_class:predictor"] != "").all()
    assert rows.loc[rows["id"] == "frames#1", "source"].item().endswith("frames.xyz#1")


def test_flags_mark_unknown_elements_and_the_summary_counts_them(screened):
    rows = read_rows(screened).set_index("id")
    assert rows.at["xenon", "unknown_elements"] == "Xe"
    assert rows.at["xenon", "flagged"]
    assert rows.at["c001", "unknown_elements"] == "" and not rows.at["c001", "oversize"]
    assert rows.at["c001", "num_atoms"] == 2
    summary = json.loads((screened / "summary.json").read_text())
    counts = summary["counts"]
    assert (counts["items"], counts["screened"], counts["skipped"]) == (14, 9, 5)
    assert counts["flagged"] == int(rows["flagged"].fillna(False).sum()) >= 1
    assert counts["unknown_elements"] == 1
    assert sum(counts["classes"].values()) == 9


def test_candidates_are_the_top_rows_per_ranked_class(screened):
    candidates = pd.read_csv(screened / "candidates.csv")
    rows = read_rows(screened)
    answered = rows[rows["skipped"] == ""]
    for name, column in (("topo_class:TI", "topo_class:p(TI)"), ("topo_class:SM", "topo_class:p(SM)")):
        ranked = candidates[candidates["class"] == name]
        assert list(ranked["rank"]) == [1, 2, 3]
        expected = answered.sort_values(column, ascending=False, kind="stable").head(3)
        assert list(ranked["id"]) == list(expected["id"])
        assert np.allclose(ranked["probability"], expected[column], atol=1e-6)


def test_a_lost_chunk_is_screened_again_and_the_rows_stay_the_same(model, inputs, screened, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(screened, out)
    (out / "_chunks" / "chunk-000001.json").unlink()  # as if killed between the part and its entry
    (out / "part-000002.parquet").unlink()  # a part lost: its entry alone does not count
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    model.screen(inputs, out, chunk_size=4, rank=["TI", "topo_class:SM"], top=3)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert before["part-000000.parquet"] == after["part-000000.parquet"]  # done chunks untouched
    assert before["part-000001.parquet"] != after["part-000001.parquet"]
    pd.testing.assert_frame_equal(read_rows(out), read_rows(screened))
    assert model.last_screen.screened_here == 8


def test_a_screen_continues_only_with_the_same_model_inputs_and_settings(model, inputs, screened, tmp_path):
    import topoclass as tc

    with pytest.raises(ConfigError, match="another input list"):
        model.screen(inputs[:1], screened, chunk_size=4)
    with pytest.raises(ConfigError, match=r"other settings.*chunk_size 4 then, 5 now"):
        model.screen(inputs, screened, chunk_size=5)
    with pytest.raises(ConfigError, match="another model"):
        tc.load("tang2019").screen(inputs, screened, chunk_size=4)
    (tmp_path / "mine.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="not a screen's"):
        model.screen(inputs, tmp_path, chunk_size=4)
    assert (tmp_path / "mine.txt").read_text() == "a user's file"


def test_shards_together_give_the_rows_of_one_screen(model, inputs, screened, tmp_path):
    out = tmp_path / "sharded"
    assert model.screen(inputs, out, chunk_size=4, shard="1/3", rank=["TI", "topo_class:SM"], top=3) is None
    assert model.last_screen.done == 1 and "other shards" in model.last_screen.line()
    model.screen(inputs, out, chunk_size=4, shard="0/3", rank=["TI", "topo_class:SM"], top=3)
    summary = model.screen(inputs, out, chunk_size=4, shard="2/3", rank=["TI", "topo_class:SM"], top=3)
    assert summary is not None and summary["counts"]["items"] == 14
    pd.testing.assert_frame_equal(read_rows(out), read_rows(screened))
    assert (out / "candidates.csv").read_text() == (screened / "candidates.csv").read_text()


def test_bad_shards_and_classes_are_refused_in_one_line(model, inputs, tmp_path):
    with pytest.raises(ConfigError, match="--shard must be I/N"):
        model.screen(inputs, tmp_path / "a", shard="3/3")
    with pytest.raises(ConfigError, match="no task has a class 'TCI'"):
        model.screen(inputs, tmp_path / "b", rank=["TCI"])


def test_a_screen_runs_network_and_trees_in_turn_on_one_core(model, inputs, tmp_path, monkeypatch):
    # Where a prediction would compute the network in a second thread, a screen does not: its
    # node's cores belong to its shards.
    from topoclass.app import predict

    def no_second_thread(*args, **kwargs):
        raise AssertionError("a screen started a second thread")

    monkeypatch.setattr(predict, "OVERLAP_ROWS", 1)
    monkeypatch.setattr(predict, "_cpus", lambda: 2)
    monkeypatch.setattr(predict, "ThreadPoolExecutor", no_second_thread)
    summary = model.screen(inputs[:1], tmp_path / "out", chunk_size=4)
    assert (summary["counts"]["screened"], summary["counts"]["skipped"]) == (6, 1)


def test_a_space_group_the_dump_states_at_the_models_tolerance_is_not_searched(model, tmp_path, monkeypatch):
    # The stated 221 is not what spglib finds for rock salt (225): seeing it in the output shows
    # the search was skipped; the one stated at another tolerance is searched. (For a model
    # trained on spglib's groups, as the Materials Project states them.)
    monkeypatch.setattr(model._run.config.data.graph, "symmetry", "spglib")
    salt = crystals(1)[0].as_dict()
    dump = tmp_path / "mp.json"
    dump.write_text(
        json.dumps(
            [
                {"material_id": "stated", "structure": salt, "symmetry": {"number": 221, "symprec": 0.1}},
                {"material_id": "searched", "structure": salt, "symmetry": {"number": 221, "symprec": 0.01}},
            ]
        )
    )
    model.screen([dump], tmp_path / "out")
    rows = read_rows(tmp_path / "out").set_index("id")
    assert rows.loc["stated", "spacegroup"] == 221 and rows.loc["searched", "spacegroup"] == 225
    assert rows.loc["stated", "formula"] == rows.loc["searched", "formula"] == "NaCl"


def test_a_model_trained_on_moyopys_groups_searches_what_the_dump_states(model, tmp_path, monkeypatch):
    # The Materials Project states spglib's groups: for a model that learned moyopy's they are
    # not what it would find, so even one stated at its tolerance is searched (221 -> 225).
    monkeypatch.setattr(model._run.config.data.graph, "symmetry", "moyopy")
    salt = crystals(1)[0].as_dict()
    dump = tmp_path / "mp.json"
    stated = {"material_id": "stated", "structure": salt, "symmetry": {"number": 221, "symprec": 0.1}}
    dump.write_text(json.dumps([stated]))
    model.screen([dump], tmp_path / "out")
    assert read_rows(tmp_path / "out").set_index("id").loc["stated", "spacegroup"] == 225
