"""Teachers in another interpreter: labels over pipes equal the in-process teacher's, bit for bit.

``sys.executable`` stands in for the other environment; the worker runs with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import io
import os
import sys
import textwrap

import numpy as np
import pytest
from conftest import rattled_cu, write_frames

from ffdistill.cli import main
from ffdistill.data.labels import label_file, stores_equal
from ffdistill.data.sampling import teacher_md_frames
from ffdistill.errors import TeacherError
from ffdistill.teachers import load_teacher
from ffdistill.teachers import worker as worker_module
from ffdistill.teachers.worker import WorkerTeacher, read_message, serve, write_message

EMT = "ase:ase.calculators.emt:EMT"
FIELDS = ("energy", "forces", "stress", "hessian_rows", "row_index", "probe_vectors", "probe_products")

#: A teacher for the death tests: EMT whose factory prints to stdout (which must not reach the
#: protocol) and exits the worker on the call after DIE_AFTER_CALLS (one call loads, one per frame).
DYING = textwrap.dedent(
    """
    import os, sys
    from ase.calculators.emt import EMT

    calls = 0

    def DyingEMT():
        global calls
        calls += 1
        print("a teacher that talks on stdout", flush=True)
        os.write(1, b"and below Python too\\n")
        limit = int(os.environ.get("DIE_AFTER_CALLS", "0"))
        if limit and calls > limit:
            print("dying on purpose", file=sys.stderr, flush=True)
            os._exit(3)
        return EMT()
    """
)


def worker_env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def workers():
    started = {spec: WorkerTeacher(sys.executable, spec, env=worker_env()) for spec in ("morse", EMT)}
    yield started
    for w in started.values():
        w.close()


@pytest.fixture
def dying_module(tmp_path, monkeypatch):
    (tmp_path / "dying_emt.py").write_text(DYING)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return "ase:dying_emt:DyingEMT"


def frames_to_label():
    periodic = [rattled_cu(seed) for seed in range(3)] + [rattled_cu(7, (2, 1, 1))]
    cluster = rattled_cu(9)
    cluster.pbc = False
    return periodic + [cluster]


@pytest.mark.parametrize("spec", ["morse", EMT])
def test_worker_labels_equal_the_in_process_teacher_bitwise(workers, spec):
    remote, local = workers[spec], load_teacher(spec)
    for name in ("spec", "version", "cutoff", "dtype", "elements"):
        assert getattr(remote, name) == getattr(local, name), name
    rng = np.random.default_rng(0)
    for atoms in frames_to_label():
        rows = np.sort(rng.choice(3 * len(atoms), size=5, replace=False))
        probes = rng.normal(size=(2, len(atoms), 3))
        got, want = remote.label(atoms, rows, probes), local.label(atoms, rows, probes)
        for field in FIELDS:
            a, b = getattr(got, field), getattr(want, field)
            assert (a is None) == (b is None), field
            if b is not None:
                assert np.asarray(a).dtype == np.asarray(b).dtype, field
                np.testing.assert_array_equal(a, b, err_msg=f"{spec} {field}")
        assert got.stress is None if not atoms.pbc.all() else got.stress.shape == (3, 3)


def test_worker_store_equals_the_in_process_store(workers, tmp_path):
    frames = write_frames(tmp_path / "f.extxyz", n=4)
    local = label_file(load_teacher("morse"), frames, str(tmp_path / "local.zarr"), rows=4, probes=2, progress=False)
    remote = label_file(workers["morse"], frames, str(tmp_path / "remote.zarr"), rows=4, probes=2, progress=False)
    assert stores_equal(local.path, remote.path)
    assert remote.attrs["teacher_spec"] == "morse" and "element_embeddings" in remote.attrs
    assert remote.attrs["element_embeddings"] == local.attrs["element_embeddings"]


def test_worker_calculator_runs_the_same_md(workers):
    start = rattled_cu(0, (2, 1, 1))
    remote = teacher_md_frames(workers["morse"], start, n_frames=2, temperature=300, interval=2, equilibration=2)
    local = teacher_md_frames(load_teacher("morse"), start, n_frames=2, temperature=300, interval=2, equilibration=2)
    for a, b in zip(remote, local):
        np.testing.assert_array_equal(a.positions, b.positions)
    atoms = rattled_cu(1)
    atoms.calc = workers[EMT].as_calculator()
    energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.calc = load_teacher(EMT).as_calculator()
    assert energy == atoms.get_potential_energy()
    np.testing.assert_array_equal(forces, atoms.get_forces())
    np.testing.assert_array_equal(stress, atoms.get_stress())


def test_worker_finite_difference_path_matches_its_rows(workers):
    """``energy_forces_stress`` (used by paths that take their own differences) agrees with the rows."""
    from ffdistill import derivatives

    teacher, atoms = workers["morse"], rattled_cu(2)
    graph = teacher.graph(atoms)
    rows = derivatives.fd_hessian_rows(lambda g: teacher.energy_forces_stress(g, False)[1], graph, [0, 4], h=1e-4)
    exact = load_teacher("morse").label(atoms, [0, 4]).hessian_rows
    np.testing.assert_allclose(rows.numpy(), exact, atol=1e-6)


def test_a_worker_killed_mid_labelling_fails_clearly_and_the_store_resumes(tmp_path):
    frames = write_frames(tmp_path / "f.extxyz", n=5)
    reference = label_file(load_teacher(EMT), frames, str(tmp_path / "ref.zarr"), rows=3, progress=False)
    out = str(tmp_path / "out.zarr")
    teacher = WorkerTeacher(sys.executable, EMT, env=worker_env())
    label = teacher.label

    def label_then_kill(atoms, rows=(), probes=None):
        if teacher._frames == 2:
            os.kill(teacher.pid, 9)
        return label(atoms, rows, probes)

    teacher.label = label_then_kill
    with pytest.raises(TeacherError) as caught:
        label_file(teacher, frames, out, rows=3, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "structure 2" in message and "killed by SIGKILL after 2 frame(s)" in message
    with pytest.raises(TeacherError, match="SIGKILL"):  # a dead worker stays dead
        label(rattled_cu(0))
    resumed = WorkerTeacher(sys.executable, EMT, env=worker_env())
    label_file(resumed, frames, out, rows=3, progress=False)
    resumed.close()
    assert stores_equal(reference.path, out)


def test_a_worker_that_hangs_while_alive_is_stopped_at_its_timeout_and_the_store_resumes(tmp_path):
    import signal
    import time

    frames = write_frames(tmp_path / "f.extxyz", n=4)
    reference = label_file(load_teacher(EMT), frames, str(tmp_path / "ref.zarr"), rows=2, progress=False)
    out = str(tmp_path / "out.zarr")
    teacher = WorkerTeacher(sys.executable, EMT, env=worker_env(), timeout=2.0)
    label = teacher.label

    def label_then_hang(atoms, rows=(), probes=None):
        if teacher._frames == 2:
            os.kill(teacher.pid, signal.SIGSTOP)  # alive, never answering
        return label(atoms, rows, probes)

    teacher.label = label_then_hang
    began = time.monotonic()
    with pytest.raises(TeacherError, match="did not answer within 2 s after 2 frame"):
        label_file(teacher, frames, out, rows=2, progress=False)
    assert time.monotonic() - began < 30 and teacher._process.poll() is not None  # stopped, not waited on forever
    resumed = WorkerTeacher(sys.executable, EMT, env=worker_env())
    label_file(resumed, frames, out, rows=2, progress=False)
    resumed.close()
    assert stores_equal(reference.path, out)


def test_label_cli_resumes_after_worker_deaths_to_the_uninterrupted_store(dying_module, tmp_path, monkeypatch, capsys):
    frames = write_frames(tmp_path / "f.extxyz", n=5)
    reference = label_file(load_teacher(EMT), frames, str(tmp_path / "ref.zarr"), rows=3, progress=False)
    out = str(tmp_path / "out.zarr")
    command = ["label", frames, "-o", out, "--teacher", dying_module, "--teacher-python", sys.executable]
    command += ["--hessian-rows", "3", "-q"]
    monkeypatch.setenv("DIE_AFTER_CALLS", "3")  # the load and two frames, then death: two frames per run
    codes = []
    for _ in range(4):
        codes.append(main(command))
        if codes[-1] == 0:
            break
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("ffdistill label: error: ") and "exited with code 3 after 2 frame(s)" in error
        assert error.endswith(": dying on purpose"), error
    assert codes == [2, 2, 0]
    assert stores_equal(reference.path, out)


def test_a_bad_interpreter_gives_one_clear_line(tmp_path, capsys):
    with pytest.raises(TeacherError, match=r"^cannot start a teacher worker with /no/such/python: No such file"):
        load_teacher("morse", python="/no/such/python")
    frames = write_frames(tmp_path / "f.extxyz", n=2)
    command = ["label", frames, "-o", str(tmp_path / "o.zarr"), "--teacher", "morse"]
    assert main([*command, "--teacher-python", "/no/such/python"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ffdistill label: error: cannot start a teacher worker")
    assert not os.path.exists(str(tmp_path / "o.zarr.partial"))


def test_an_environment_without_ffdistill_says_so(tmp_path):
    bare = tmp_path / "bare-python"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')  # no site-packages: no ffdistill, no numpy
    bare.chmod(0o755)
    with pytest.raises(TeacherError) as caught:
        WorkerTeacher(str(bare), "morse", echo_stderr=False)
    message = str(caught.value)
    assert "\n" not in message and "exited with code 1 before answering" in message
    assert "No module named" in message


def test_errors_of_the_remote_teacher_arrive_as_teacher_errors(workers):
    with pytest.raises(TeacherError, match="unknown teacher spec 'nonsense'"):
        WorkerTeacher(sys.executable, "nonsense", env=worker_env(), echo_stderr=False)
    uranium = rattled_cu(0)
    uranium.numbers[:] = 92
    with pytest.raises(TeacherError, match="does not cover element"):  # refused before it is sent
        workers[EMT].label(uranium)
    teacher = workers["morse"]
    bad = rattled_cu(0)
    bad.positions[1] = np.nan  # the neighbour list refuses it in the worker (a RuntimeError there)
    with pytest.raises(TeacherError, match="^RuntimeError: point 1 has non-finite coordinate"):
        teacher.label(bad)
    assert teacher.label(rattled_cu(0)).forces.shape == (4, 3)  # and the worker still serves


def test_protocol_versions_must_match(monkeypatch):
    monkeypatch.setattr(worker_module, "PROTOCOL", 99)
    with pytest.raises(TeacherError, match="this worker speaks protocol 1, the client 99"):
        WorkerTeacher(sys.executable, "morse", env=worker_env(), echo_stderr=False)


def test_the_worker_forwards_trust_and_sends_no_pickles(monkeypatch):
    import ffdistill.teachers

    seen = {}

    def fake_load(spec, trust=False):
        seen.update(spec=spec, trust=trust)
        return load_teacher("morse")

    monkeypatch.setattr(ffdistill.teachers, "load_teacher", fake_load)
    requests = io.BytesIO()
    write_message(requests, {"type": "hello", "protocol": worker_module.PROTOCOL, "spec": "mace:x.pt", "trust": True})
    write_message(requests, {"type": "label", "info": {}}, _atoms_arrays(rattled_cu(0), rows=[1, 2]))
    requests.seek(0)
    replies = io.BytesIO()
    assert serve(requests, replies) == 0
    assert seen == {"spec": "mace:x.pt", "trust": True}
    replies.seek(0)
    ready, _ = read_message(replies)
    labels, arrays = read_message(replies)
    assert ready["type"] == "ready" and labels["type"] == "labels"
    assert arrays["hessian_rows"].shape == (2, 4, 3) and all(a.dtype != object for a in arrays.values())
    with pytest.raises(ValueError):  # object arrays (pickles) cannot be written to the wire
        write_message(io.BytesIO(), {"type": "x"}, {"bad": np.array([{}], dtype=object)})


def _atoms_arrays(atoms, rows):
    _, arrays = worker_module.atoms_message(atoms)
    return {**arrays, "rows": np.asarray(rows, dtype=np.int64)}


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"NOPE" + b"\0" * 4, "expected a message"),
        (b"FFDW" + (1 << 30).to_bytes(4, "big"), "header of"),  # a 1 GiB header is never read
        (b"FFDW" + (5).to_bytes(4, "big") + b"[1,2]", "list of arrays"),
        (b"FFDW" + (31).to_bytes(4, "big") + b'{"arrays": [["x", -1]], "a": 1}', "array entry"),
        (b"FFDW" + (40).to_bytes(4, "big") + b'{"arrays": [["x", 99999999999]], "a": 1}', "array entry"),
    ],
)
def test_the_protocol_refuses_what_a_peer_may_not_send(payload, why):
    import io

    from ffdistill.teachers.worker import MAGIC, ProtocolError, read_message

    payload = payload.replace(b"FFDW", MAGIC)
    header = payload[8:]
    if payload[:4] == MAGIC and int.from_bytes(payload[4:8], "big") < (1 << 20):  # lengths as sent
        payload = MAGIC + len(header).to_bytes(4, "big") + header
    with pytest.raises(ProtocolError, match=why):
        read_message(io.BytesIO(payload))
