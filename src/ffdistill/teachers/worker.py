"""A teacher that runs in another Python interpreter and answers over pipes.

MACE pins e3nn 0.4.4, fairchem, Orb or an in-house model bring their own torch or numpy: they cannot
always share ffdistill's environment. ``WorkerTeacher`` starts ``PYTHON -m ffdistill.teachers.worker``
in that other environment, which loads the teacher there with the ordinary ``load_teacher(spec, trust)``
and labels the frames it is sent. ffdistill must be importable in the other interpreter (a venv made
with ``--system-site-packages``, or ``pip install --no-deps -e /path/to/ffdistill`` beside numpy, ase,
vesin and torch); see the README, "Teachers in their own environment".

Protocol (version ``PROTOCOL``), one message each way per request, on the worker's stdin and stdout::

    message = b"FFDW" + uint32 big-endian JSON length + JSON header + the header's arrays, back to back
    header  = {"type": ..., ..., "arrays": [[name, nbytes], ...]}
    array   = the bytes ``np.save(allow_pickle=False)`` writes: dtype and shape travel, never code

    client                                         worker
    hello {protocol, spec, trust, device}    ->    ready {protocol, spec, version, cutoff, elements, dtype}
    label {info} numbers positions cell pbc  ->    labels energy forces [stress] hessian_rows row_index
          rows [probes]                                   [probe_vectors probe_products]
    calculate {calculator, properties} ...   ->    results energy forces [stress] (the teacher's ASE calculator)
    embeddings                               ->    embeddings {elements} one array per element, or none
    close (or end of stdin)                  ->    the worker exits
    any request the worker cannot answer     ->    error {kind, message}; the worker keeps serving

Anything the teacher prints goes to the worker's stderr, which is passed through, and whose last line
explains a worker that died.
"""

from __future__ import annotations

import atexit
import collections
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import traceback
import warnings
import weakref
from collections.abc import Sequence

import ase
import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from ffdistill import __version__, errors
from ffdistill.errors import FFDistillError, TeacherError
from ffdistill.graph import structure, to_ase
from ffdistill.potential import Outputs, Want
from ffdistill.teachers.base import Teacher, TeacherLabels, validate_labels

PROTOCOL = 1
MAGIC = b"FFDW"
#: Scalar ``atoms.info`` entries (charge, spin, ...) travel with each frame; anything else stays home.
INFO_TYPES = (bool, int, float, str)


#: seconds for the handshake (the remote teacher loads its model then)
HELLO_TIMEOUT_S = 900.0


def call_timeout(n_atoms: int, n_items: int) -> float:
    """Default seconds a labelling call may take: 300 s plus 1 s per atom and Hessian row or probe, generous for a
    GPU or CPU teacher (a full Hessian of 64 atoms, 192 rows, gets 3.5 hours; a 64-atom frame with 4 rows 10 min)."""
    return 300.0 + 1.0 * n_atoms * (1 + n_items)


class ProtocolError(Exception):
    """Bytes on the pipe that are not a message of this protocol."""


#: Bounds on what a peer may send: a header is a small JSON object; an array is at most a full Hessian of a
#: large cell (3N × 3N float64 for N = 20,000 atoms is 29 GB: far beyond; 4 GiB covers any labelling request).
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAY_BYTES = 4 << 30
#: dtypes a worker may announce for its teacher
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------------------------- framing


def write_message(stream, header: dict, arrays: dict | None = None) -> None:
    """One length-prefixed message: a JSON header, then each array as ``np.save`` bytes (no pickle)."""
    blobs = []
    for name, value in (arrays or {}).items():
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(value), allow_pickle=False)
        blobs.append((name, buffer.getvalue()))
    text = json.dumps({**header, "arrays": [[name, len(blob)] for name, blob in blobs]}).encode()
    stream.write(MAGIC + struct.pack(">I", len(text)) + text + b"".join(blob for _, blob in blobs))
    stream.flush()


def read_message(stream) -> tuple[dict, dict]:
    """The next message as (header, arrays); EOFError when the other side has gone."""
    prefix = _read_exactly(stream, 8)
    if prefix[:4] != MAGIC:
        raise ProtocolError(f"expected a message, got bytes {prefix!r}")
    length = struct.unpack(">I", prefix[4:])[0]
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"a header of {length} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = json.loads(_read_exactly(stream, length))
        listed = header.pop("arrays", []) if isinstance(header, dict) else None
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(f"a header that is not JSON ({error})") from error
    if not isinstance(listed, list):  # its length is bounded by the header's size
        raise ProtocolError("a header without a list of arrays")
    arrays = {}
    for entry in listed:
        name, size = entry if isinstance(entry, list) and len(entry) == 2 else (None, -1)
        if not isinstance(name, str) or not isinstance(size, int) or not 0 <= size <= MAX_ARRAY_BYTES:
            raise ProtocolError(f"an array entry {entry!r} (a name and 0 to {MAX_ARRAY_BYTES} bytes)")
        try:
            arrays[name] = np.load(io.BytesIO(_read_exactly(stream, size)), allow_pickle=False)
        except ValueError as error:
            raise ProtocolError(f"array {name!r} is not an .npy array without objects ({error})") from error
    return header, arrays


def _read_exactly(stream, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the pipe closed mid-message" if chunks or left < n else "the pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def atoms_message(atoms) -> tuple[dict, dict]:
    """What crosses the pipe for a structure: numbers, positions, cell, pbc and scalar info entries."""
    info = {k: v for k, v in atoms.info.items() if isinstance(v, INFO_TYPES)}
    arrays = {"numbers": atoms.numbers, "positions": atoms.positions, "cell": atoms.cell.array, "pbc": atoms.pbc}
    return {"info": info}, arrays


def atoms_from_message(header: dict, arrays: dict) -> ase.Atoms:
    atoms = ase.Atoms(numbers=arrays["numbers"], positions=arrays["positions"], cell=arrays["cell"], pbc=arrays["pbc"])
    atoms.info.update(header.get("info", {}))
    return atoms


# --------------------------------------------------------------------------------------------- client


#: Workers not yet closed: closed at exit, while the threads that read their stderr still run.
_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for teacher in list(_LIVE):
        teacher.close()


class WorkerTeacher(Teacher):
    """The teacher ``spec`` loaded and run by the interpreter ``python``; labels arrive over pipes.

    ``spec``, ``version``, ``cutoff``, ``elements`` and ``dtype`` are the remote teacher's, so a store
    labelled through a worker is the store the same teacher writes in process (and either can resume
    the other). ``env`` replaces the worker's environment (default: this process's).
    """

    #: Labels (Hessian rows included) come whole from the worker; there is no local ``energy``.
    has_autograd = False

    def __init__(
        self,
        python: str,
        spec: str,
        trust: bool = False,
        env: dict | None = None,
        echo_stderr: bool = True,
        device: str = "cpu",
        timeout: float | None = None,
    ):
        self.python, self.remote_spec, self.remote_device = python, spec, device
        self.timeout = timeout  #: seconds a labelling call may take; None: ``call_timeout``
        self.spec, self.version = spec, "unknown"
        self._frames, self._dead, self._calculators = 0, None, 0
        self._embeddings = False  # not asked yet
        self._start(env, echo_stderr)
        _LIVE.add(self)
        try:
            self._handshake(trust)
        except BaseException:
            self.close()
            raise

    # --- process

    def _start(self, env: dict | None, echo_stderr: bool) -> None:
        command = [self.python, "-m", "ffdistill.teachers.worker"]
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
        except OSError as error:
            raise TeacherError(f"cannot start a teacher worker with {self.python}: {error.strerror or error}") from None
        self._tail: collections.deque = collections.deque(maxlen=50)
        sink = sys.stderr if echo_stderr else None
        self._pump = threading.Thread(target=_pump, args=(self._process.stderr, sink, self._tail), daemon=True)
        self._pump.start()

    def _handshake(self, trust: bool) -> None:
        hello = {"type": "hello", "protocol": PROTOCOL, "spec": self.remote_spec, "trust": trust}
        hello["device"] = self.remote_device  # where the remote teacher computes (older workers ignore it)
        try:
            ready, _ = self._request(hello)
        except FFDistillError as error:  # say which environment refused: the message alone reads as this one's
            raise type(error)(f"teacher worker ({self.python}): {error}") from None
        if ready.get("type") != "ready" or ready.get("protocol") != PROTOCOL:
            raise TeacherError(f"teacher worker {self.python} speaks protocol {ready.get('protocol')}, not {PROTOCOL}")
        self.spec, self.version, self.cutoff = ready["spec"], ready["version"], float(ready["cutoff"])
        self.elements = None if ready["elements"] is None else frozenset(ready["elements"])
        if ready.get("dtype") not in DTYPES:
            raise TeacherError(
                f"teacher worker {self.python} announced dtype {ready.get('dtype')!r}, not one of {', '.join(DTYPES)}"
            )
        self.dtype = DTYPES[ready["dtype"]]
        self.remote_ffdistill = ready.get("ffdistill_version")

    def _request(self, header: dict, arrays: dict | None = None, timeout: float = HELLO_TIMEOUT_S):
        """Send one request, return the reply; a worker error becomes the same ffdistill error here. A worker
        that has not begun its reply within ``timeout`` seconds is stopped (it hangs while alive)."""
        if self._dead is not None:
            raise self._dead
        try:
            write_message(self._process.stdin, header, arrays)
            # Request and reply alternate, so nothing of a reply is buffered before this one begins.
            if not select.select([self._process.stdout], [], [], timeout)[0]:
                self._process.kill()
                self._process.wait()
                self._dead = TeacherError(
                    f"teacher worker for {self.remote_spec} ({self.python}) did not answer within {timeout:.0f} s "
                    f"after {self._frames} frame(s); it was stopped (--teacher-timeout sets the limit); re-run the "
                    "same command to resume"
                )
                raise self._dead
            reply, out = read_message(self._process.stdout)
        except (OSError, EOFError, ProtocolError, ValueError) as error:
            self._dead = self._death(error)
            raise self._dead from None
        if reply.get("type") == "error":
            raise _error_class(reply.get("kind"))(reply.get("message", "the teacher worker failed"))
        return reply, out

    def _death(self, cause: Exception):
        """One line: who died, how, after how many frames, and the last thing it said on stderr."""
        code = _wait(self._process)
        if code is None:  # alive but talking nonsense: it cannot be trusted with another frame
            self._process.kill()
            self._process.wait()
        self._pump.join(timeout=2)
        said = next((line for line in reversed(self._tail) if line.strip()), None)
        how = _exit_description(code) if code is not None else f"stopped answering ({cause})"
        when = f"after {self._frames} frame(s)" if self._frames else "before answering"
        last = f": {said.strip()}" if said else " (nothing on its stderr)"
        return TeacherError(f"teacher worker for {self.remote_spec} ({self.python}) {how} {when}{last}")

    def close(self) -> None:
        """Ask the worker to exit, and make sure it has."""
        process = getattr(self, "_process", None)
        if process is None or process.stdin.closed:
            return  # never started, or closed already
        if process.poll() is None:
            try:
                write_message(process.stdin, {"type": "close"})
            except (OSError, ValueError):
                pass
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        if _wait(process, 5) is None:
            process.kill()
            process.wait()
        self._pump.join(timeout=2)
        if not self._pump.is_alive():  # a reader blocked in the pipe must not lose it under its feet
            process.stderr.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - at interpreter exit anything may already be gone
            pass

    @property
    def pid(self) -> int:
        return self._process.pid

    # --- the Teacher interface

    def label(self, atoms, rows: Sequence[int] = (), probes: np.ndarray | None = None):
        self.check_elements(atoms.numbers)
        header, arrays = atoms_message(atoms)
        arrays["rows"] = np.asarray(rows, dtype=np.int64)
        if probes is not None:
            arrays["probes"] = np.asarray(probes)  # as given: the remote teacher converts it as it would here
        limit = self.timeout or call_timeout(len(atoms), len(arrays["rows"]) + (0 if probes is None else len(probes)))
        _, out = self._request({"type": "label", **header}, arrays, limit)
        self._frames += 1
        labels = TeacherLabels(
            energy=float(out["energy"]),
            forces=out["forces"],
            stress=out.get("stress"),
            hessian_rows=out["hessian_rows"],
            row_index=out["row_index"],
            probe_vectors=out.get("probe_vectors"),
            probe_products=out.get("probe_products"),
        )
        validate_labels(labels, self.spec, len(atoms))
        return labels

    def predict(self, graph, want: Want = Want()) -> Outputs:
        """The contract, answered by the remote teacher's own labels per structure: its Hessian rows and
        H·v are its own (autograd where it has it), not differences taken over the pipe."""
        parts, rows, probes = [], [], []
        for b in range(graph.n_structures):
            lo, hi = int(graph.ptr[b]), int(graph.ptr[b + 1])
            mine = _items_of(graph.row_index, graph.batch, b, 3) if want.hessian_rows else None
            picked = _items_of(graph.probe_owner, None, b, 1) if want.probe_products else None
            local_rows = [] if mine is None else (graph.row_index[mine] - 3 * lo).tolist()
            local_probes = None if picked is None else graph.probe_vectors[picked, lo:hi].double().cpu().numpy()
            parts.append(self.label(to_ase(structure(graph, b))[0], local_rows, local_probes))
            rows.append(mine)
            probes.append(picked)
        return _outputs(graph, want, parts, rows, probes)

    def energy_forces_stress(self, graph, stress: bool):
        """Energy, forces and stress of a one-structure graph, for paths that take their own finite
        differences of a force-only teacher (``has_autograd`` is False here)."""
        labels = self.label(to_ase(graph)[0])
        return _tensor(labels.energy), _tensor(labels.forces), _tensor(labels.stress) if stress else None

    def as_calculator(self):
        """An ASE calculator that asks the worker's own ``teacher.as_calculator()`` (MD, relaxations)."""
        self._calculators += 1
        return WorkerCalculator(self, self._calculators)

    def calculate(self, atoms, properties: Sequence[str], calculator: int) -> dict:
        header, arrays = atoms_message(atoms)
        request = {"type": "calculate", "calculator": calculator, "properties": list(properties), **header}
        _, out = self._request(request, arrays)
        self._frames += 1
        return {k: float(v) if v.ndim == 0 else v for k, v in out.items()}

    def element_embeddings(self):
        if self._embeddings is False:
            reply, out = self._request({"type": "embeddings"})
            self._embeddings = None if reply.get("elements") is None else {int(k): v for k, v in out.items()}
        return self._embeddings

    def __repr__(self) -> str:
        return f"WorkerTeacher({self.spec!r}, version={self.version!r}, python={self.python!r})"


class WorkerCalculator(Calculator):
    """Energy, forces and (periodic cells) stress from the teacher's ASE calculator in the worker."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012 - ASE's convention

    def __init__(self, teacher: WorkerTeacher, number: int, **kwargs):
        super().__init__(**kwargs)
        self.teacher, self.number = teacher, number

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = self.teacher.calculate(self.atoms, properties, self.number)


def _items_of(index, batch, b: int, per_atom: int):
    """Positions in ``index`` (Hessian-row coordinates, or probe owners) that belong to structure ``b``."""
    if index is None or len(index) == 0:
        return None
    owner = index if batch is None else batch[index // per_atom]
    return (owner == b).nonzero().squeeze(1)


def _outputs(graph, want: Want, parts: list, rows: list, probes: list) -> Outputs:
    """Per-structure labels assembled into one ``Outputs`` in the graph's layout and dtype."""
    as_t = lambda x: torch.as_tensor(np.asarray(x), dtype=graph.R.dtype, device=graph.R.device)  # noqa: E731
    energy = as_t([p.energy for p in parts])
    forces = torch.cat([as_t(p.forces) for p in parts])
    stress = None
    if want.stress and all(p.stress is not None for p in parts):
        stress = torch.stack([as_t(p.stress) for p in parts])
    row_out = _scatter(graph, [p.hessian_rows for p in parts], rows, graph.row_index, as_t)
    probe_out = _scatter(graph, [p.probe_products for p in parts], probes, graph.probe_vectors, as_t)
    return Outputs(energy, forces if want.forces else None, row_out, None, None, probe_out, stress)


def _scatter(graph, blocks: list, picks: list, items, as_t):
    if items is None or all(p is None for p in picks):
        return None
    out = graph.R.new_zeros(len(items), graph.n_atoms, 3)
    for b, (block, picked) in enumerate(zip(blocks, picks)):
        if picked is not None and len(picked):
            lo, hi = int(graph.ptr[b]), int(graph.ptr[b + 1])
            out[picked, lo:hi] = as_t(block)
    return out


def _tensor(x) -> torch.Tensor | None:
    return None if x is None else torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _pump(stream, sink, tail: collections.deque) -> None:
    """Pass the worker's stderr through line by line, keeping the last lines for error messages."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        tail.append(line.rstrip("\n"))
        if sink is not None:
            try:
                sink.write(line)
                sink.flush()
            except (OSError, ValueError):
                pass


def _wait(process, timeout: float = 5.0) -> int | None:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _error_class(kind: str | None):
    """The worker names an ffdistill error class; anything else arrives as a TeacherError."""
    found = getattr(errors, kind or "", None)
    return found if isinstance(found, type) and issubclass(found, errors.FFDistillError) else errors.TeacherError


# --------------------------------------------------------------------------------------------- worker


class _Server:
    """The worker side: one teacher, loaded by the ordinary ``load_teacher``, answering requests."""

    def __init__(self, teacher):
        self.teacher, self.calculators = teacher, {}

    def ready(self) -> dict:
        t = self.teacher
        elements = None if t.elements is None else sorted(int(z) for z in t.elements)
        dtype = str(t.dtype).replace("torch.", "")
        return {
            "type": "ready",
            "protocol": PROTOCOL,
            "spec": t.spec,
            "version": t.version,
            "cutoff": float(t.cutoff),
            "elements": elements,
            "dtype": dtype,
            "ffdistill_version": __version__,
        }

    def answer(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        kind = header.get("type")
        if kind == "label":
            return self.label(header, arrays)
        if kind == "calculate":
            return self.calculate(header, arrays)
        if kind == "embeddings":
            return self.embeddings()
        raise ProtocolError(f"unknown request {kind!r}")

    def label(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        labels = self.teacher.label(atoms_from_message(header, arrays), arrays["rows"].tolist(), arrays.get("probes"))
        out = {
            "energy": np.float64(labels.energy),
            "forces": labels.forces,
            "hessian_rows": labels.hessian_rows,
            "row_index": labels.row_index,
            "stress": labels.stress,
            "probe_vectors": labels.probe_vectors,
            "probe_products": labels.probe_products,
        }
        return {"type": "labels"}, {k: np.asarray(v, dtype=_wire_dtype(k)) for k, v in out.items() if v is not None}

    def calculate(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        atoms = atoms_from_message(header, arrays)
        number = int(header["calculator"])
        if number not in self.calculators:
            self.calculators[number] = self.teacher.as_calculator()
        atoms.calc = self.calculators[number]
        out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        out["free_energy"] = atoms.calc.results.get("free_energy", out["energy"])
        if "stress" in header.get("properties", ()) and all(atoms.pbc):
            out["stress"] = atoms.get_stress()
        return {"type": "results"}, {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}

    def embeddings(self) -> tuple[dict, dict]:
        found = self.teacher.element_embeddings()
        if found is None:
            return {"type": "embeddings", "elements": None}, {}
        arrays = {str(z): np.asarray(v, dtype=np.float64) for z, v in found.items()}
        return {"type": "embeddings", "elements": sorted(int(z) for z in found)}, arrays


def _wire_dtype(name: str):
    return np.int64 if name == "row_index" else np.float64


def _error_reply(error: BaseException) -> dict:
    first = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, FFDistillError):
        return {"type": "error", "kind": type(error).__name__, "message": first}
    return {"type": "error", "kind": "TeacherError", "message": f"{type(error).__name__}: {first}".rstrip(": ")}


def serve(stdin, stdout) -> int:
    """Handshake, then answer requests until ``close`` or end of input; returns the exit code."""
    try:
        hello, _ = read_message(stdin)
    except EOFError:
        return 0
    if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL:
        message = f"this worker speaks protocol {PROTOCOL}, the client {hello.get('protocol')}"
        write_message(stdout, {"type": "error", "kind": "TeacherError", "message": message})
        print(f"ffdistill teacher worker: {message}", file=sys.stderr)
        return 2
    try:
        from ffdistill.teachers import load_teacher

        where = {"device": hello["device"]} if "device" in hello else {}  # an older client names no device
        server = _Server(load_teacher(hello["spec"], trust=bool(hello.get("trust")), **where))
    except Exception as error:  # noqa: BLE001 - import errors of the other environment included: say them, then stop
        write_message(stdout, _error_reply(error))
        return 1
    write_message(stdout, server.ready())
    return _loop(server, stdin, stdout)


def _loop(server: _Server, stdin, stdout) -> int:
    while True:
        try:
            header, arrays = read_message(stdin)
        except EOFError:
            return 0
        if header.get("type") == "close":
            return 0
        try:
            reply, out = server.answer(header, arrays)
        except Exception as error:  # noqa: BLE001 - the client re-raises it; the worker keeps serving
            traceback.print_exc(file=sys.stderr)
            reply, out = _error_reply(error), {}
        try:
            write_message(stdout, reply, out)
        except BrokenPipeError:  # the client has gone (interrupted): nobody is left to answer
            return 0


def main() -> int:
    """Entry point of ``python -m ffdistill.teachers.worker``: the protocol owns stdout, so whatever the
    teacher prints (Python or C) is sent to stderr instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's to handle; it closes our stdin
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # as the ffdistill CLI does
    warnings.filterwarnings("ignore", message=".*TorchScript.*|.*torch.jit.*|.*cuEquivariance.*|.*accelerat.*")
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return serve(sys.stdin.buffer, protocol_out)


if __name__ == "__main__":
    sys.exit(main())
