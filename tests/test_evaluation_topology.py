"""Topology (RCSR net) through moffragmentor 0.0.6 + Systre: the compatibility fixes, the known
nets of HKUST-1 (tbo) and MOF-5 (pcu), loud setup failures, and failing or hanging jobs that
cost one structure each.

Tests that run moffragmentor or Java skip, with the reason, where `bash scripts/install_eval.sh`
could not install them (moffragmentor is optional; `java` comes from Debian's
openjdk-17-jre-headless).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from mofasa import Crystal
from tests.conftest import ROOT

try:
    md.version("mofchecker")
except md.PackageNotFoundError:  # pragma: no cover
    pytest.skip(
        "mofchecker not installed: run `bash scripts/install_eval.sh`", allow_module_level=True
    )

from mofasa.evaluation import compat, jobs, topology
from mofasa.evaluation.runner import evaluate

FIXTURES = ROOT / "tests" / "data" / "topology"


def _moffragmentor_missing() -> str | None:
    try:
        md.version("moffragmentor")
    except md.PackageNotFoundError:
        return "moffragmentor 0.0.6 is not installed (optional; `bash scripts/install_eval.sh`)"
    return None


MISSING_MOFFRAGMENTOR = _moffragmentor_missing()
MISSING_JAVA = (
    None if shutil.which("java") else
    "`java` is not on the PATH (Systre needs it: apt-get install openjdk-17-jre-headless, "
    "or run `bash scripts/install_eval.sh` as root)"
)  # fmt: skip
needs_moffragmentor = pytest.mark.skipif(
    MISSING_MOFFRAGMENTOR is not None, reason=str(MISSING_MOFFRAGMENTOR)
)
needs_java = pytest.mark.skipif(MISSING_JAVA is not None, reason=str(MISSING_JAVA))

# Systre's console output, abridged from real runs of Systre 19.6.0
NAMED = """Structure #1 - .
   Input structure described as 3-periodic.
   Given space group is P1.
   Structure was identified with RCSR symbol:
       Name:\t\ttbo

Finished structure #1 - .
"""
DISCONNECTED = """Structure #1 - .
   Input structure described as 3-periodic.
   2 nodes and 3 edges in repeat unit as given.
   Structure is not connected.
   Processing components separately.
   ==========
   Processing component 1:
      dimension = 2
   Input structure described as 2-periodic.
   Structure was identified with RCSR symbol:
       Name:\t\tsql
   Finished component 1.
   ==========
   Processing component 2:
      dimension = 1
   Input structure described as 1-periodic.
   Structure is new for this run.
"""
FAILED = """Structure #1 - .
   Input structure described as 3-periodic.
==================================================
!!! ERROR (INPUT) - Node Node 1 has connectivity 10, where 8 was expected.
!!!    In structure #1 - .
!!!    Last status: Mapping node names...
==================================================
"""


def read(name: str) -> Crystal:
    from mofasa.data import read_cif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_cif(FIXTURES / name)


def methane(name: str) -> Crystal:
    h, edge = 0.629, 12.0
    cart = np.array([[0, 0, 0], [h, h, h], [-h, -h, h], [-h, h, -h], [h, -h, -h]]) + edge / 2
    return Crystal([6, 1, 1, 1, 1], cart / edge, np.eye(3) * edge, id=name)


# ---- stand-ins for the topology job (module level: workers import them by name)
def fake_topology_job(crystal: Crystal, timeout: float) -> dict:
    if crystal.id == "hangs":
        time.sleep(600)  # a Java or fragmentation hang: the pool must kill it
    if crystal.id == "fails":
        raise RuntimeError("Systre blew up")
    return {"topology": "pcu", "topology_status": "ok", "topology_error": ""}


# ---- parsing and the compatibility layer: no Java needed (moffragmentor where marked)
def test_parse_systre_output():
    named = topology.parse_systre_output(NAMED)
    assert named.names == ["tbo"] and named.dimensions == [3] and not named.errors
    split = topology.parse_systre_output(DISCONNECTED)
    assert split.names == ["sql", None] and split.dimensions == [2, 1]
    failed = topology.parse_systre_output(FAILED)
    assert failed.errors == ["ERROR (INPUT) - Node Node 1 has connectivity 10, where 8 was "
                             "expected. (Last status: Mapping node names...)"]  # fmt: skip


@needs_moffragmentor
@pytest.mark.filterwarnings("ignore:The hashes produced for directed graphs")
def test_compat_layer_for_moffragmentor():
    import networkx as nx

    compat.import_moffragmentor()
    assert compat.is_moffragmentor_applied()
    from moffragmentor.sbu.sbu import SBU
    from pymatgen.analysis.graphs import MoleculeGraph, StructureGraph
    from pymatgen.core import Molecule

    assert callable(StructureGraph.with_local_env_strategy)
    assert callable(MoleculeGraph.with_edges)
    # the Weisfeiler-Lehman hash of a building block (a MultiDiGraph) works again, and equals
    # the hash of the same graph without parallel edges
    water = Molecule(["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    graph = MoleculeGraph.from_edges(water, {(0, 1): None, (0, 2): None})
    graph.graph.add_edge(0, 1)  # a parallel edge
    assert graph.graph.is_multigraph()
    with pytest.raises(nx.NetworkXNotImplemented):  # what broke moffragmentor
        nx.weisfeiler_lehman_graph_hash(graph.graph, node_attr="specie")
    block = SBU.__new__(SBU)
    block.molecule_graph = graph
    expected = nx.weisfeiler_lehman_graph_hash(nx.DiGraph(graph.graph), node_attr="specie")
    assert block.weisfeiler_lehman_graph_hash == expected


@needs_moffragmentor
@needs_java
def test_moffragmentor_errors_are_logged_not_hidden():
    """moffragmentor disables its logger on import; ours is enabled, so its own failure
    messages (here: Systre rejecting an empty net) reach our records."""
    compat.import_moffragmentor()
    from moffragmentor.utils.systre import run_systre

    capture = topology._LogCapture()
    with capture.attached():
        assert run_systre("garbage") == ""  # moffragmentor's own wrapper swallows the error
    assert any("Error running Systre" in m for m in capture.messages)


def test_missing_moffragmentor_fails_loudly(monkeypatch):
    real = md.version

    def version(name: str) -> str:
        if name == "moffragmentor":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(compat.md, "version", version)
    with pytest.raises(compat.EvaluationSetupError, match="moffragmentor is not installed"):
        topology.require_topology()


@needs_moffragmentor
def test_missing_java_fails_the_run_before_any_structure(tmp_path, monkeypatch, capsys):
    from tests.test_evaluation_cli import run_cli

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(compat.EvaluationSetupError, match="java"):
        topology.require_topology()
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(FIXTURES / "mof5_primitive.cif", src)
    out = tmp_path / "out"
    assert run_cli("evaluate", src, "--out", out, "--topology", "--no-progress") == 2
    assert "java" in capsys.readouterr().err
    assert not (out / "summary.json").exists() and not (out / "results.db").exists()


# ---- Systre itself
@needs_moffragmentor
@needs_java
def test_systre_errors_and_time_limit(tmp_path):
    broken = topology.run_systre("CRYSTAL\n   GROUP P1\n   CELL 10 10 10 90 90 90\nEND\n")
    assert broken.errors and "ERROR" in broken.errors[0] and not broken.timed_out
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    start = time.monotonic()
    slow = topology.run_systre("CRYSTAL\nEND\n", timeout=1, java=["/bin/sh", str(hang)])
    assert slow.timed_out and time.monotonic() - start < 10
    crash = tmp_path / "crash.sh"
    crash.write_text("#!/bin/sh\necho 'Exception in thread main' >&2\nexit 3\n")
    died = topology.run_systre("CRYSTAL\nEND\n", java=["/bin/sh", str(crash)])
    assert "code 3" in died.errors[-1] and "Exception" in died.errors[-1]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv (util-linux)")
def test_systre_dies_with_its_worker(tmp_path):
    """The pool kills a worker with SIGKILL at its time limit; Java (here a stand-in that
    sleeps) must not outlive it. A plain child process plays the worker."""
    import subprocess

    pidfile = tmp_path / "pid"
    script = tmp_path / "java.sh"
    script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 120\n")
    code = (
        "from mofasa.evaluation import topology; "
        f"topology.run_systre('CRYSTAL\\nEND\\n', 600, ['/bin/sh', {str(script)!r}])"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)  # fmt: skip
    try:
        for _ in range(300):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.1)
        pid = int(pidfile.read_text())
    finally:
        worker.kill()  # what the pool does at a time limit
        worker.wait()
    for _ in range(50):
        stat = Path(f"/proc/{pid}/stat")
        if not stat.exists() or stat.read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:  # clean up what this test started, then fail
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the Systre stand-in outlived its killed worker")


# ---- the real thing, through `evaluate`, and failing jobs
@needs_moffragmentor
@needs_java
def test_hkust1_is_tbo_and_mof5_is_pcu(tmp_path):
    crystals = [read("mof5_primitive.cif"), read("hkust1_FIQCEN.cif")]
    assert [c.num_atoms for c in crystals] == [106, 156]
    # screen: HKUST-1 (exposed Cu) stops early, which saves time, and topology runs regardless
    result = evaluate(crystals, tmp_path / "out", topology=True, modes=("strict",), screen=True,
                      progress=False, thumbnails=0)  # fmt: skip
    mof5, hkust1 = result.records
    assert (mof5["topology"], mof5["topology_status"]) == ("pcu", "ok"), mof5
    assert (hkust1["topology"], hkust1["topology_status"]) == ("tbo", "ok"), hkust1
    print(f"topology seconds: MOF-5 {mof5['topology_seconds']}, "
          f"HKUST-1 {hkust1['topology_seconds']}", file=sys.stderr)  # fmt: skip
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    t = s["topology"]
    assert t["nets"] == {"pcu": 1, "tbo": 1} and t["named_rate"] == 1.0
    assert t["status_counts"] == {"ok": 2} and t["n_distinct_nets"] == 2
    assert t["nets_valid"] == {"pcu": 1}  # HKUST-1's open Cu sites: exposed metal
    assert s["versions"]["moffragmentor"] == "0.0.6" and "java" in s["versions"]
    assert s["settings"]["topology"] is True
    from ase.db import connect

    rows = {r.name: r for r in connect(str(tmp_path / "out" / "results.db")).select()}
    assert rows["mof5_primitive"].topology == "pcu" and rows["hkust1_FIQCEN"].topology == "tbo"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<h2>Topology</h2>" in html and "<td>tbo</td>" in html


def test_hanging_and_failing_topology_jobs_cost_one_structure(monkeypatch):
    monkeypatch.setattr(jobs, "topology_job", fake_topology_job)
    monkeypatch.setattr(topology, "require_topology", lambda: {"moffragmentor": "stand-in"})
    crystals = [methane("hangs"), methane("fails"), methane("fine")]
    start = time.monotonic()
    result = evaluate(crystals, topology=True, topology_timeout=2, modes=("strict",),
                      progress=False)  # fmt: skip
    assert time.monotonic() - start < 60
    hangs, fails, fine = result.records
    assert hangs["topology_status"] == "timeout" and "2 s" in hangs["topology_error"]
    assert fails["topology_status"] == "error" and "Systre blew up" in fails["topology_error"]
    assert fine["topology_status"] == "ok" and fine["topology"] == "pcu"
    assert hangs["topology"] == "" and all("valid_strict" in r for r in result.records)
    t = result.summary["topology"]
    assert t["status_counts"] == {"ok": 1, "error": 1, "timeout": 1}
    assert t["named_rate"] == pytest.approx(1 / 3)
    assert result.summary["failures"] == {"topology_error": 1, "topology_timeout": 1}
