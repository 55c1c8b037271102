"""Topology: the RCSR net of a MOF, through moffragmentor 0.0.6 and the Systre jar it bundles.

For one structure, as given (no symmetrisation, no cell reduction):

1. moffragmentor builds the bond graph (VESTA cutoffs), splits the framework into nodes and
   linkers (``MOF.fragment``) and embeds the net: one vertex per building block, 2-c vertices
   removed.
2. Systre (Java) identifies the net against the RCSR archive it ships.

We run Systre ourselves rather than through moffragmentor's ``Net.rcsr_code``, which turns
every failure into an empty name: here Systre's own error lines are kept, it gets a time limit,
and it dies with its worker process if the pool kills that worker (``setpriv --pdeathsig``).

Outcome per structure (``topology_status``): ``ok`` (every component named; ``topology`` is the
net, components of a disconnected net, e.g. interpenetrated ones, joined by ``+``), ``unnamed``
(Systre ran but at least one component is not in its RCSR archive), ``error`` (fragmentation,
net construction or Systre failed; the message says which) and, set by the worker pool,
``timeout`` and ``crash``. A missing moffragmentor or ``java`` is an `EvaluationSetupError`
raised by `require_topology` before any structure is looked at, never a per-structure status.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mofasa.evaluation.compat import EvaluationSetupError, import_moffragmentor

if TYPE_CHECKING:  # pragma: no cover
    from mofasa.data.crystal import Crystal

__all__ = [
    "STATUSES",
    "SystreResult",
    "identify_topology",
    "parse_systre_output",
    "require_topology",
    "run_systre",
    "systre_input",
]

#: every value ``topology_status`` can take
STATUSES: tuple[str, ...] = ("ok", "unnamed", "error", "timeout", "crash")
SYSTRE_CLASS = "org.gavrog.apps.systre.SystreCmdline"
# C1-only JIT and the serial GC halve Systre's run time (JVM start-up dominates: 4 s vs 9 s on a
# busy core for HKUST-1); headless because Systre is a Swing application too.
JAVA_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Djava.awt.headless=true")
_INSTALL = (
    "run `bash scripts/install_eval.sh` (moffragmentor 0.0.6 with --no-deps, and, as root, "
    "apt-get install openjdk-17-jre-headless)"
)
# a 3-periodic net every Systre knows (the primitive cubic net): the start-up self-test
_PCU = """CRYSTAL
   NAME pcu-selftest
   GROUP P1
   CELL 10 10 10 90 90 90
   NODE 0 6 0 0 0
   EDGE 0 0 0 1 0 0
   EDGE 0 0 0 0 1 0
   EDGE 0 0 0 0 0 1
END
"""
_ERROR_WIDTH = 500


@dataclass
class SystreResult:
    """What one Systre run said.

    Attributes:
        names: RCSR name of each component of the net, None where Systre found none.
        dimensions: periodicity of each component (3 for a framework).
        errors: Systre's error lines (``!!! ERROR ...``), with its last status line.
        returncode: the Java process's exit code (None when it was killed at the time limit).
        timed_out: Systre ran past its time limit.
    """

    names: list[str | None] = field(default_factory=list)
    dimensions: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    returncode: int | None = 0
    timed_out: bool = False


def parse_systre_output(text: str) -> SystreResult:
    """Read the names, component dimensions and errors from ``SystreCmdline``'s console output.

    A connected net is one component; a disconnected one (interpenetrated frameworks, stacked
    layers) is reported by Systre component by component, each with its own name or none.
    """
    result = SystreResult()
    lines = text.splitlines()
    current: int | None = None  # index of the component being read
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("Input structure described as") and "-periodic" in stripped:
            dim = re.search(r"(\d+)-periodic", stripped)
            result.names.append(None)
            result.dimensions.append(int(dim.group(1)) if dim else 0)
            current = len(result.names) - 1
        elif stripped == "Structure is not connected.":
            # the line before described the whole (disconnected) input, not a component
            if result.names:
                result.names.pop()
                result.dimensions.pop()
            current = None
        elif stripped.startswith("Structure was identified with RCSR symbol"):
            name = _next_name(lines, i)
            if current is not None and name:
                result.names[current] = name
        elif stripped.startswith("!!! ERROR"):
            message = stripped.removeprefix("!!! ").strip()
            status = next(
                (s.strip().removeprefix("!!!").strip() for s in lines[i + 1 : i + 4]
                 if "Last status" in s),
                "",
            )  # fmt: skip
            result.errors.append(f"{message} ({status})" if status else message)
    return result


def _next_name(lines: list[str], i: int) -> str | None:
    for line in lines[i + 1 : i + 3]:
        match = re.match(r"\s*Name:\s*(\S+)", line)
        if match:
            return match.group(1)
    return None


def _java() -> str | None:
    return shutil.which("java")


def _java_command(java: str | list[str] | None) -> list[str]:
    if isinstance(java, list):  # a stand-in for the whole command (tests)
        command = list(java)
    else:
        java = java or _java()
        if java is None:
            raise EvaluationSetupError(f"`java` is not on the PATH (Systre needs it); {_INSTALL}")
        command = [java, *JAVA_OPTIONS, "-cp", _systre_jar(), SYSTRE_CLASS]
    setpriv = shutil.which("setpriv")
    if setpriv:  # Java dies with the worker when the pool kills it (timeout, crash)
        command = [setpriv, "--pdeathsig", "KILL", *command]
    return command


def _systre_jar() -> str:
    from moffragmentor.utils.systre import SYSTRE_JAR

    return str(SYSTRE_JAR)


def run_systre(
    cgd: str, timeout: float = 120.0, java: str | list[str] | None = None
) -> SystreResult:
    """Run Systre on a net in its ``.cgd`` text form.

    Args:
        cgd: the net (``CRYSTAL ... END``).
        timeout: seconds before the Java process is killed (``timed_out`` is then True).
        java: the ``java`` executable (default: the one on the PATH); a list replaces the whole
            command line (the ``.cgd`` path is appended).

    Raises:
        EvaluationSetupError: ``java`` is not on the PATH.
    """
    command = _java_command(java)
    with tempfile.TemporaryDirectory(prefix="mofasa-systre-") as tmp:
        path = Path(tmp) / "net.cgd"
        path.write_text(cgd)
        try:
            proc = subprocess.run(
                [*command, str(path)], capture_output=True, text=True, timeout=max(1.0, timeout),
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return SystreResult(returncode=None, timed_out=True)
    result = parse_systre_output(proc.stdout)
    result.returncode = proc.returncode
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        result.errors.append(f"java exited with code {proc.returncode}: {tail}"[:_ERROR_WIDTH])
    return result


def require_topology(java: str | None = None) -> dict[str, str]:
    """Check, before any structure, that topology can run; return the versions used.

    Imports moffragmentor through the compatibility layer, finds its Systre jar and runs Systre
    once on the primitive cubic net, which must come back as ``pcu``.

    Raises:
        EvaluationSetupError: moffragmentor or ``java`` is missing or broken.
    """
    import importlib.metadata as md

    import_moffragmentor()
    jar = _systre_jar()
    if not Path(jar).is_file():
        raise EvaluationSetupError(f"moffragmentor's Systre jar is missing ({jar}); {_INSTALL}")
    java = java or _java()
    if java is None:
        raise EvaluationSetupError(
            f"--topology needs `java` on the PATH (Systre is a Java program); {_INSTALL}"
        )
    try:
        probe = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EvaluationSetupError(f"`{java} -version` failed: {exc}; {_INSTALL}") from exc
    version_line = (probe.stderr or probe.stdout).strip().splitlines()[:1]
    if probe.returncode != 0:
        raise EvaluationSetupError(f"`{java} -version` failed: {version_line}; {_INSTALL}")
    check = run_systre(_PCU, timeout=120.0, java=java)
    if check.names != ["pcu"]:
        raise EvaluationSetupError(
            f"Systre did not identify the primitive cubic net (got {check.names}, errors "
            f"{check.errors}, timed out: {check.timed_out}); {_INSTALL}"
        )
    return {
        "moffragmentor": md.version("moffragmentor"),
        "systre": Path(jar).stem.removeprefix("Systre-"),
        "java": version_line[0] if version_line else "unknown",
    }


class _LogCapture:
    """moffragmentor's log records (WARNING and above) during one structure."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, message: Any) -> None:
        record = message.record
        text = f"{record['level'].name}: {record['message']}"
        exc = record["exception"]
        if exc is not None and exc.type is not None:
            text += f" [{exc.type.__name__}: {exc.value}]"
        self.messages.append(" ".join(text.split())[:300])

    @contextlib.contextmanager
    def attached(self) -> Iterator[_LogCapture]:
        from loguru import logger

        sink = logger.add(self, level="WARNING", filter="moffragmentor", format="{message}",
                          backtrace=False, diagnose=False)  # fmt: skip
        try:
            yield self
        finally:
            logger.remove(sink)


def systre_input(crystal: Crystal) -> str:
    """The ``.cgd`` text of the net moffragmentor finds in ``crystal``.

    Raises:
        ValueError: fragmentation or net construction failed, or the net has no edges.
    """
    import_moffragmentor()
    from moffragmentor import MOF
    from moffragmentor.utils.systre import _get_systre_input_from_pmg_structure_graph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # symprec None: the structure as given (moffragmentor would symmetrise at 0.5 Å)
        mof = MOF.from_structure(crystal.to_pymatgen(), symprec=None, angle_tolerance=None)
        fragments = mof.fragment()
        net = fragments.net_embedding
        if net is None:
            raise ValueError("moffragmentor could not build the net of the building blocks")
        cgd = _get_systre_input_from_pmg_structure_graph(net.get_pmg_structure_graph(),
                                                         net.lattice)  # fmt: skip
    if "\n   EDGE " not in cgd:
        # Systre would invent edges between nearest nodes: a made-up net, not an answer
        raise ValueError("the net of the building blocks has no edges")
    return cgd


def identify_topology(
    crystal: Crystal, timeout: float = 180.0, java: str | list[str] | None = None
) -> dict[str, Any]:
    """RCSR net of one structure.

    Args:
        crystal: the structure (used as given).
        timeout: seconds for the whole identification; Systre gets what fragmentation left of
            it (at least 5 s). The worker pool enforces the same limit from outside.
        java: passed to `run_systre`.

    Returns:
        ``{"topology": name or "", "topology_status": "ok" | "unnamed" | "error" |
        "timeout", "topology_error": message or "", "topology_components": int}``.

    Raises:
        EvaluationSetupError: moffragmentor or java is missing (never a per-structure status).
    """
    start = time.monotonic()
    out: dict[str, Any] = {"topology": "", "topology_status": "error", "topology_error": ""}
    capture = _LogCapture()
    with capture.attached():
        try:
            cgd = systre_input(crystal)
        except EvaluationSetupError:
            raise
        except Exception as exc:
            out["topology_error"] = _message(f"{type(exc).__name__}: {exc}", capture)
            return out
    left = max(5.0, timeout - (time.monotonic() - start) - 2.0)
    result = run_systre(cgd, timeout=left, java=java)
    out["topology_components"] = len(result.names)
    if result.timed_out:
        out.update(topology_status="timeout",
                   topology_error=f"Systre ran past {left:.0f} s")  # fmt: skip
    elif result.errors or not result.names:
        errors = result.errors or ["Systre printed no result"]
        out["topology_error"] = _message("Systre: " + "; ".join(errors), capture)
    elif any(name is None for name in result.names):
        unnamed = [f"{d}-periodic" for n, d in zip(result.names, result.dimensions, strict=True)
                   if n is None]  # fmt: skip
        named = [n for n in result.names if n]
        out.update(topology_status="unnamed", topology_error=_message(
            f"not in Systre's RCSR archive: {len(unnamed)} of {len(result.names)} component(s) "
            f"({', '.join(unnamed)})" + (f"; named: {'+'.join(named)}" if named else ""),
            capture))  # fmt: skip
    else:
        out.update(topology="+".join(result.names), topology_status="ok")
    return out


def _message(text: str, capture: _LogCapture) -> str:
    if capture.messages:  # moffragmentor's own account (its logger, enabled by compat)
        text += " | moffragmentor log: " + " / ".join(dict.fromkeys(capture.messages[-3:]))
    return text[:_ERROR_WIDTH]


def _quiet_loguru_default() -> None:
    """In a worker: keep loguru's stderr output for other libraries, without moffragmentor's
    DEBUG chatter (its WARNING+ messages are recorded per structure instead)."""
    import sys

    from loguru import logger

    with contextlib.suppress(ValueError):  # the default handler (id 0) is gone already
        logger.remove(0)
        logger.add(sys.stderr, level="WARNING",
                   filter=lambda r: not (r["name"] or "").startswith("moffragmentor"))  # fmt: skip
