"""results.db keeps names that read as numbers (a CIF named 000123.cif) as they were."""
from __future__ import annotations

import numpy as np

from mofasa.data.crystal import Crystal
from mofasa.data.database import (
    Query,
    export_csv,
    from_db_values,
    select_rows,
    to_db_values,
)
from mofasa.evaluation.store import ResultStore


def test_number_like_names_round_trip_through_the_results_database(tmp_path):
    crystal = Crystal([30, 8], np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]), np.eye(3) * 4.0)
    store = ResultStore(tmp_path / "results.db")
    names = ["000123", "1.5e3", "True", "str:own", "sample_000001"]
    for i, name in enumerate(names):
        store.add({"input_index": i, "name": name, "valid": True}, crystal, None)
    store.update_many([{"input_index": 0, "note": "42"}], ["note"])
    again = ResultStore(tmp_path / "results.db")  # as a resumed run reads it
    records = again.records()
    assert [r["name"] for r in records] == names
    assert records[0]["note"] == "42" and records[0]["valid"]
    assert again.crystal(records[0]).id == "000123"
    csv = tmp_path / "rows.csv"  # `mofasa db` exports the names as they were too
    export_csv(select_rows(tmp_path / "results.db", Query()), csv)
    assert [line.split(",")[4] for line in csv.read_text().splitlines()[1:]] == names
    assert from_db_values(to_db_values({"a": "7", "b": 7, "c": "x"})) == {"a": "7", "b": 7,
                                                                          "c": "x"}
