"""One device everywhere (issue 14), checked on a CPU: batched teacher labelling equals per-frame labelling,
and nothing a training step, a labelling call or an MD step creates strays from the configured device.

A CPU-only machine cannot see a tensor land on the wrong GPU, so the checks are made to fail on a CPU:
``DeviceAudit`` flags tensor factories called without ``device=`` (on a GPU run they land on the CPU) and
copies to the host, and a student's predict runs on the ``meta`` device, where any tensor made on the CPU
is an error or a stray output.
"""

import os

import numpy as np
import pytest
import torch
import zarr
from ase import units
from ase.build import molecule
from ase.md.verlet import VelocityVerlet
from conftest import rattled_cu, write_frames

from ffdistill import derivatives
from ffdistill.calculator import PotentialCalculator
from ffdistill.cli import main
from ffdistill.data.labels import label_file, stores_equal
from ffdistill.devices import DeviceAudit, device_of
from ffdistill.graph import batch_graphs, from_ase
from ffdistill.potential import Capabilities, Outputs, Want
from ffdistill.students import build_student
from ffdistill.teachers import Teacher, load_teacher
from ffdistill.teachers.toy import MorsePotential, TorchModelTeacher
from ffdistill.training.loss import build_loss
from ffdistill.training.trainer import train_step

#: Where host tensors are expected: reading structures in, copying results out to numpy.
LABEL_BOUNDARIES = ("ffdistill.graph.from_ase", "ffdistill.teachers.base._np")
MD_BOUNDARIES = ("ffdistill.graph.from_ase", "ffdistill.calculator._results")
FIELDS = ("forces", "stress", "hessian_rows", "row_index", "probe_vectors", "probe_products")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


def _frames_rows_probes(n=4, seed=0):
    """Frames of different sizes (one molecule), each with its own rows and probes, as label_file draws them."""
    frames = [rattled_cu(seed + k, (2, 1, 1) if k % 2 else (1, 1, 1)) for k in range(n - 1)]
    frames.append(molecule("CH3CH2OH"))
    frames[-1].rattle(0.02, seed=1)
    rng = np.random.default_rng(seed)
    rows = [np.sort(rng.choice(3 * len(a), size=k % 3 + 1, replace=False)) for k, a in enumerate(frames)]
    rows[1] = np.array([], dtype=np.int64)  # a frame without rows among frames with rows
    probes = [derivatives.random_probes(len(a), 2, seed, k) for k, a in enumerate(frames)]
    return frames, rows, probes


def _assert_labels_equal(single, batched, exact: bool):
    for one, many in zip(single, batched):
        compare = np.testing.assert_array_equal if exact else lambda a, b: np.testing.assert_allclose(a, b, atol=1e-9)
        assert (one.energy == many.energy) if exact else abs(one.energy - many.energy) < 1e-9
        for name in FIELDS:
            a, b = getattr(one, name), getattr(many, name)
            assert (a is None) == (b is None), name
            if a is not None:
                assert a.shape == b.shape, name
                compare(a, b)


# --------------------------------------------------------------------------------------- batched labelling


def test_batched_morse_labels_equal_per_frame_labels_bit_for_bit(morse_teacher):
    """Rows, probes and stress of periodic and open structures of different sizes in one call: the float64
    Morse teacher gives exactly the bits of frame-by-frame labelling (structures do not interact)."""
    frames, rows, probes = _frames_rows_probes()
    single = [morse_teacher.label(a, r, p) for a, r, p in zip(frames, rows, probes)]
    batched = morse_teacher.label_batch(frames, rows, probes)
    _assert_labels_equal(single, batched, exact=True)
    assert batched[-1].stress is None and batched[0].stress is not None
    assert batched[1].hessian_rows.shape == (0, len(frames[1]), 3)


def test_batched_labels_without_rows_or_probes(morse_teacher):
    frames, _, _ = _frames_rows_probes(3, seed=5)
    batched = morse_teacher.label_batch(frames)
    _assert_labels_equal([morse_teacher.label(a) for a in frames], batched, exact=True)
    assert all(b.probe_vectors is None and len(b.row_index) == 0 for b in batched)


def test_a_teacher_that_labels_in_its_own_way_is_asked_frame_by_frame(morse_teacher, emt_teacher):
    """Workers and ASE calculators override ``label``: a batch is their ``label`` per frame, in order."""

    class Counting(Teacher):
        spec, version, elements = "counting", "1", None

        def __init__(self):
            self.calls = []

        def label(self, atoms, rows=(), probes=None):
            self.calls.append(len(atoms))
            return morse_teacher.label(atoms, rows, probes)

    frames, rows, probes = _frames_rows_probes(3)
    counting = Counting()
    expected = morse_teacher.label_batch(frames, rows, probes)
    _assert_labels_equal(expected, counting.label_batch(frames, rows, probes), exact=True)
    assert counting.calls == [len(a) for a in frames]
    cu = [rattled_cu(k) for k in range(3)]
    _assert_labels_equal([emt_teacher.label(a, [0, 4]) for a in cu], emt_teacher.label_batch(cu, [[0, 4]] * 3), True)


def test_batched_label_file_writes_the_per_frame_store(morse_teacher, tmp_path):
    frames = write_frames(tmp_path / "f.extxyz", n=7)
    one = label_file(morse_teacher, frames, str(tmp_path / "one.zarr"), rows=3, probes=2, progress=False)
    three = label_file(
        morse_teacher, frames, str(tmp_path / "three.zarr"), rows=3, probes=2, progress=False, batch_size=3
    )
    assert len(three) == 7 and stores_equal(one.path, three.path)


class BatchInterrupting(Teacher):
    """Delegates to a real teacher and raises after ``budget`` batches, like a Ctrl-C."""

    def __init__(self, inner, budget):
        self.inner, self.budget, self.sizes = inner, budget, []
        self.spec, self.version, self.elements, self.cutoff = inner.spec, inner.version, inner.elements, inner.cutoff

    def label_batch(self, atoms_list, rows_list=None, probes_list=None):
        if self.budget == 0:
            raise KeyboardInterrupt
        self.budget -= 1
        self.sizes.append(len(atoms_list))
        return self.inner.label_batch(atoms_list, rows_list, probes_list)


def _frames_done(partial):
    return int(zarr.open_group(partial, mode="r").attrs["frames_done"])


def test_killed_batched_runs_resume_to_the_identical_store(morse_teacher, tmp_path, monkeypatch):
    """Interrupted between batches and in the middle of writing one: the batch is committed whole or not
    at all, a resume starts at a batch boundary and the finished store is the per-frame store, bit for bit."""
    from ffdistill.data import labels

    frames = write_frames(tmp_path / "f.extxyz", n=8)
    reference = label_file(morse_teacher, frames, str(tmp_path / "ref.zarr"), rows=2, probes=1, progress=False)
    out = str(tmp_path / "out.zarr")
    run = lambda teacher: label_file(teacher, frames, out, rows=2, probes=1, progress=False, batch_size=3)  # noqa: E731
    monkeypatch.setattr(labels, "BLOCK_FRAMES", 3)  # a block per batch
    with pytest.raises(KeyboardInterrupt):
        run(BatchInterrupting(morse_teacher, 1))
    assert _frames_done(out + ".partial") == 3

    def die_before_commit(name):  # the next block written to every array, not committed
        raise KeyboardInterrupt

    monkeypatch.setattr(labels, "fault_point", die_before_commit)
    with pytest.raises(KeyboardInterrupt):
        run(morse_teacher)
    monkeypatch.undo()
    monkeypatch.setattr(labels, "BLOCK_FRAMES", 3)
    assert _frames_done(out + ".partial") == 3
    assert zarr.open_group(out + ".partial", mode="r")["energy"].shape == (6,)  # the uncommitted block is on disk
    resumed = BatchInterrupting(morse_teacher, 10)
    run(resumed)
    assert resumed.sizes == [3, 2] and stores_equal(reference.path, out)


class NaNForLarge(MorsePotential):
    """Morse, but a NaN energy for structures of 8 atoms: a teacher that breaks on one frame of a batch."""

    def forward(self, graph):
        energy = super().forward(graph)
        return torch.where(graph.atoms_per_structure == 8, torch.full_like(energy, float("nan")), energy)


def test_a_refused_frame_in_a_batch_is_named(tmp_path):
    import ase.io

    from ffdistill.errors import TeacherError

    frames = [rattled_cu(k, (2, 1, 1) if k == 3 else (1, 1, 1)) for k in range(5)]
    path = str(tmp_path / "f.extxyz")
    ase.io.write(path, frames)
    teacher = TorchModelTeacher(NaNForLarge(), spec="nan", cutoff=5.0)
    with pytest.raises(TeacherError, match=r"f\.extxyz, structure 3: teacher nan returned non-finite energy"):
        label_file(teacher, path, str(tmp_path / "s.zarr"), rows=1, progress=False, batch_size=4)


# ------------------------------------------------------------------------------------------ device audit


def test_the_audit_catches_a_tensor_made_without_a_device():
    """The audit itself: a factory without ``device=`` and a ``.cpu()`` are problems, ``*_like`` is not."""
    x = torch.ones(3)
    with DeviceAudit("cpu") as audit:
        torch.zeros(3)
        x.new_zeros(2), torch.zeros_like(x), torch.as_tensor(x), torch.arange(2, device=x.device)
        x.cpu()
    assert [f.kind for f in audit.problems()] == ["default-factory", "host-copy"]
    with DeviceAudit("meta") as audit:
        x.to("cpu")
    assert [f.kind for f in audit.problems()] == ["host-copy", "stray"]


def _labelled_graphs(teacher, n=3):
    frames, rows, probes = _frames_rows_probes(n + 1)
    frames, rows, probes = frames[:n], rows[:n], probes[:n]
    graphs = []
    for atoms, lab in zip(frames, teacher.label_batch(frames, rows, probes)):
        as_t = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
        graphs.append(
            from_ase(atoms, 4.0)._replace(
                energy=as_t([lab.energy]),
                forces=as_t(lab.forces),
                stress=as_t(lab.stress)[None],
                hessian_rows=as_t(lab.hessian_rows),
                row_index=torch.as_tensor(lab.row_index),
                probe_vectors=as_t(lab.probe_vectors),
                probe_products=as_t(lab.probe_products),
                probe_owner=torch.zeros(len(lab.probe_vectors), dtype=torch.long),
            )
        )
    return graphs


@pytest.mark.parametrize("student", ["painn-tiny", "schnet-tiny", "painn-direct-small"])
def test_a_training_step_makes_every_tensor_on_the_device(morse_teacher, student):
    graphs = _labelled_graphs(morse_teacher)
    torch.manual_seed(0)
    model = build_student(student, [29], 4.0, **({"channels": 8} if "direct" in student else {}))
    model.fit_references(graphs)
    loss = build_loss(5.0, 100.0, 1000.0, consistency=1.0 if "direct" in student else 0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = batch_graphs(graphs)
    with DeviceAudit("cpu") as audit:
        terms = train_step(model, batch, loss, optimizer, 10.0)
    assert np.isfinite(terms["total"]) and terms["hessian"] > 0
    assert audit.outputs > 100 and not audit.problems(), audit.report()


def test_a_labelling_call_makes_every_tensor_on_the_device(morse_teacher):
    frames, rows, probes = _frames_rows_probes()
    with DeviceAudit("cpu", LABEL_BOUNDARIES) as audit:
        morse_teacher.label_batch(frames, rows, probes)
        morse_teacher.label(frames[0], rows[0], probes[0])
    assert audit.outputs > 100 and not audit.problems(), audit.report()


def test_an_md_step_makes_every_tensor_on_the_device():
    torch.manual_seed(0)
    model = build_student("painn-tiny", [29], 4.0).eval()
    atoms = rattled_cu(0)
    atoms.calc = PotentialCalculator(model)
    dynamics = VelocityVerlet(atoms, 1.0 * units.fs)
    with DeviceAudit("cpu", MD_BOUNDARIES) as audit:
        dynamics.run(2)
    assert audit.outputs > 100 and not audit.problems(), audit.report()


@pytest.mark.parametrize("student", ["painn-tiny", "schnet-tiny"])
def test_a_student_predicts_on_the_meta_device_without_touching_the_cpu(student):
    """On ``meta`` any tensor made on the CPU inside predict is an error or a stray output."""
    torch.manual_seed(0)
    model = build_student(student, [29], 4.0).to("meta")
    graph = batch_graphs([from_ase(rattled_cu(k), 4.0) for k in range(2)]).to("meta")
    with DeviceAudit("meta") as audit:
        out = model.predict(graph, Want(stress=True, features=True))
    assert out.forces.device.type == "meta" and out.stress.shape == (2, 3, 3)
    assert audit.outputs > 50 and not audit.problems(), audit.report()


class DeviceSpy:
    """A potential that says it computes on ``meta``, records where its inputs arrive and answers zeros of
    the right shapes (a meta tensor holds no values to compute with)."""

    capabilities = Capabilities()
    cutoff, device = 4.0, torch.device("meta")

    def __init__(self):
        self.seen = set()

    def check_elements(self, numbers):
        pass

    def predict(self, graph, want=Want()):
        self.seen |= {x.device.type for x in graph if isinstance(x, torch.Tensor)}
        n, b = graph.n_atoms, graph.n_structures
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        return Outputs(
            zeros(b),
            zeros(n, 3),
            zeros(len(graph.row_index), n, 3) if want.hessian_rows else None,
            probe_products=zeros(len(graph.probe_vectors), n, 3) if want.probe_products else None,
            stress=zeros(b, 3, 3) if want.stress else None,
        )


def test_the_calculator_and_the_teacher_put_the_graph_on_the_potentials_device(morse_teacher):
    spy = DeviceSpy()
    atoms = rattled_cu(0)
    atoms.calc = PotentialCalculator(spy)
    atoms.get_forces()
    assert spy.seen == {"meta"} and device_of(spy) == torch.device("meta")

    class MetaMorse(type(morse_teacher)):
        def predict(self, graph, want=Want()):
            return spy.predict(graph, want)

    spy.seen.clear()
    teacher = MetaMorse(morse_teacher.model, "morse", 5.0)
    teacher.device = torch.device("meta")
    frames, rows, probes = _frames_rows_probes(3)
    labels = teacher.label_batch(frames, rows, probes)
    assert spy.seen == {"meta"}  # row_index, probe_vectors and probe_owner included
    assert [lab.hessian_rows.shape for lab in labels] == [(len(r), len(a), 3) for r, a in zip(rows, frames)]


def test_a_student_moves_with_load_calculator_and_the_device_of_a_bound_method(tmp_path, morse_teacher):
    from ffdistill.calculator import load_calculator, save_student

    model = build_student("painn-tiny", [29], 4.0)
    save_student(model, str(tmp_path / "s.pt"))
    calc = load_calculator(str(tmp_path / "s.pt"), device="cpu")
    assert device_of(calc.potential).type == "cpu" and device_of(morse_teacher.energy) == morse_teacher.device


def test_an_ase_teacher_stays_on_the_cpu_and_says_so_once(emt_teacher, capsys):
    teacher = load_teacher("ase:ase.calculators.emt:EMT")
    assert teacher.to_device(torch.device("cuda")) is teacher and teacher.device.type == "cpu"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs on the CPU" in err[0] and "cuda" in err[0]
    teacher.to_device("cpu")
    assert capsys.readouterr().err == ""


def test_the_morse_teacher_moves_to_a_device(morse_teacher):
    teacher = load_teacher("morse").to_device("meta")
    assert teacher.device.type == "meta" and teacher.graph(rattled_cu(0)).R.device.type == "meta"


# ----------------------------------------------------------------------------------------- command line


@no_cuda
@pytest.mark.parametrize(
    "argv",
    [
        ["label", "IN", "-o", "OUT", "--teacher", "morse", "--device", "cuda"],
        ["sample", "--teacher", "morse", "--structure", "Cu", "-o", "OUT", "--device", "cuda:1"],
        ["md", "MODEL", "Cu", "-o", "OUT", "--device", "cuda"],
        ["evaluate", "MODEL", "--data", "IN", "--teacher", "morse", "-o", "OUT", "--device", "cuda"],
        ["demo", "-o", "OUT", "--quick", "--device", "cuda"],
        ["compare", "train.epochs=1", "-o", "OUT", "--device", "cuda"],
        ["train", "data.store=IN", "train.device=cuda", "output=OUT"],
    ],
    ids=["label", "sample", "md", "evaluate", "demo", "compare", "train"],
)
def test_cuda_without_cuda_is_one_line_naming_the_option_and_exit_2(argv, tmp_path, capsys):
    model = tmp_path / "s.pt"
    from ffdistill.calculator import save_student

    save_student(build_student("painn-tiny", [29], 4.0), str(model))
    frames = write_frames(tmp_path / "f.extxyz", n=2)
    paths = {"IN": frames, "OUT": str(tmp_path / "out"), "MODEL": str(model)}
    argv = [paths.get(a, a.replace("IN", frames).replace("OUT", str(tmp_path / "out"))) for a in argv]
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    key = "train.device" if argv[0] == "train" else "--device"
    assert len(err) == 1 and f"{key}=cuda" in err[0] and "CUDA is not available" in err[0], err
    assert not os.path.exists(tmp_path / "out")


def test_label_batch_size_on_the_command_line(tmp_path, capsys):
    frames = write_frames(tmp_path / "f.extxyz", n=5)
    common = ["label", frames, "--teacher", "morse", "--hessian-rows", "2", "--device", "cpu", "-q"]
    assert main([*common, "-o", str(tmp_path / "a.zarr")]) == 0
    assert main([*common, "--batch-size", "2", "-o", str(tmp_path / "b.zarr")]) == 0
    assert stores_equal(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"))
    assert main([*common, "--batch-size", "0", "-o", str(tmp_path / "c.zarr")]) == 2
    assert "--batch-size" in capsys.readouterr().err and not (tmp_path / "c.zarr").exists()


def test_the_worker_builds_its_teacher_on_the_device_asked(monkeypatch):
    """``--teacher-python`` runs the teacher elsewhere: the device travels in the hello."""
    import io

    import ffdistill.teachers
    from ffdistill.teachers import worker

    seen = {}

    def fake_load(spec, trust=False, device="unset"):
        seen.update(spec=spec, device=device)
        return load_teacher("morse")

    monkeypatch.setattr(ffdistill.teachers, "load_teacher", fake_load)
    requests, replies = io.BytesIO(), io.BytesIO()
    hello = {"type": "hello", "protocol": worker.PROTOCOL, "spec": "morse", "trust": False, "device": "cuda:1"}
    worker.write_message(requests, hello)
    requests.seek(0)
    assert worker.serve(requests, replies) == 0 and seen == {"spec": "morse", "device": "cuda:1"}


def _morse_by_hand(atoms, D=1.0, a=1.5, r0=2.35, rc=5.0):
    """The ``morse`` teacher's energy and forces written out in numpy on ASE's neighbour list:
    E = 1/2 sum_ij phi(r_ij), phi = (D (1 - e^{-a (r - r0)})^2 - D) (cos(pi r / rc) + 1) / 2,
    F_i = sum_j phi'(r_ij) (R_j - R_i + S) / r_ij (periodic self-images cancel in pairs)."""
    from ase.neighborlist import neighbor_list

    i, d, vec = neighbor_list("idD", atoms, rc)
    x = np.exp(-a * (d - r0))
    pair, smooth = D * (1 - x) ** 2 - D, 0.5 * (np.cos(np.pi * d / rc) + 1)
    dphi = 2 * D * a * (1 - x) * x * smooth - pair * 0.5 * np.pi / rc * np.sin(np.pi * d / rc)
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, i, (dphi / d)[:, None] * vec)
    return 0.5 * np.sum(pair * smooth), forces


@pytest.mark.parametrize("scored", ["morse (autograd)", "emt (central differences)"])
def test_an_autograd_teachers_own_accuracy_runs_through_its_contract(scored, morse_teacher, emt_teacher, tmp_path):
    """``teacher_accuracy`` of an autograd teacher batches graphs to the teacher's device and asks the teacher
    itself (it used to pass ``teacher.energy``, which has no ``predict``). Scored against labels of another
    potential (Morse against EMT's labels, and EMT, a force-only teacher, against Morse's), its errors equal
    those worked out by hand from ASE's EMT and a numpy Morse, on frames of 4 and 8 atoms: errors pooled
    over atoms, as students are scored, whichever way the teacher computes."""
    import ase.io
    from ase.calculators.emt import EMT

    from ffdistill.evaluate.accuracy import store_test_set, teacher_accuracy

    frames = [rattled_cu(0), rattled_cu(1, (2, 1, 1)), rattled_cu(2)]
    for k, atoms in enumerate(frames):
        atoms.info["group"] = k
    ase.io.write(tmp_path / "f.extxyz", frames)
    labeller, teacher = (emt_teacher, morse_teacher) if scored.startswith("morse") else (morse_teacher, emt_teacher)
    assert teacher.has_autograd == scored.startswith("morse")
    store = label_file(labeller, str(tmp_path / "f.extxyz"), str(tmp_path / "s.zarr"), rows=0, progress=False)
    errors = teacher_accuracy(teacher, store_test_set(store))

    e_err, f_err, cosines = [], [], []
    for atoms in ase.io.read(tmp_path / "f.extxyz", ":"):  # the positions as written (8 decimals)
        atoms.calc = EMT()
        e_emt, f_emt = atoms.get_potential_energy(), atoms.get_forces()
        e_morse, f_morse = _morse_by_hand(atoms)
        e_err.append(abs(e_morse - e_emt) / len(atoms))
        f_err.append(np.abs(f_morse - f_emt).ravel())
        norms = np.linalg.norm(f_morse, axis=1) * np.linalg.norm(f_emt, axis=1)
        cosines.append((f_morse * f_emt).sum(axis=1) / norms)
    f_err, cosines = np.concatenate(f_err), np.concatenate(cosines)
    assert errors["energy_mae_meV_per_atom"] == pytest.approx(1000 * np.mean(e_err), rel=1e-9)
    assert errors["force_mae_meV_per_A"] == pytest.approx(1000 * f_err.mean(), rel=1e-9)
    assert errors["force_cosine"] == pytest.approx(cosines.mean(), rel=1e-9)
    # a telling comparison: Morse is not EMT, and pooling over atoms is not averaging frame means
    frame_means = [f_err[:12].mean(), f_err[12:36].mean(), f_err[36:].mean()]
    assert 1000 * f_err.mean() > 10 and abs(np.mean(frame_means) / f_err.mean() - 1) > 1e-3
    assert np.isnan(errors["hessian_row_mae"])


@pytest.fixture(scope="module")
def sevennet():
    pytest.importorskip("sevenn")
    return load_teacher("sevenn")


def test_sevennet_labels_a_batch_as_it_labels_frames_and_stays_on_its_device(sevennet):
    """Both ways SevenNet can take a batch (structure by structure, or one model call in sevenn's batch mode)
    give the per-frame labels: forces, rows, probes and stress to float32 rounding, the energy to its sum's."""
    from ase.build import bulk

    frames = [bulk("Si", "diamond", a=5.43, cubic=True) for _ in range(2)]
    for k, atoms in enumerate(frames):
        atoms.rattle(0.05, seed=k)
    rows = [[5], []]
    probes = [None, derivatives.random_probes(len(frames[1]), 1, 0, 1)]
    single = [sevennet.label(a, r, p) for a, r, p in zip(frames, rows, probes)]
    for batched in (False, True):
        sevennet.batch_structures = batched
        try:
            with DeviceAudit("cpu", LABEL_BOUNDARIES) as audit:
                labels = sevennet.label_batch(frames, rows, probes)
        finally:
            sevennet.batch_structures = False
        assert not audit.problems(), audit.report()
        for one, many in zip(single, labels):
            assert abs(one.energy - many.energy) < 1e-4
            for name in ("forces", "hessian_rows", "probe_products", "stress"):
                if getattr(one, name) is not None:
                    np.testing.assert_allclose(getattr(many, name), getattr(one, name), atol=1e-4, err_msg=name)
