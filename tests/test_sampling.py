"""Where frames and Hessian rows come from."""

import numpy as np
import torch
from conftest import rattled_cu

from ffdistill.graph import from_ase
from ffdistill.sampling import perturbed_copies, select_rows, teacher_md_frames


def _graph_with_rows(norms):
    graph = from_ase(rattled_cu(0), 3.0)
    k = len(norms)
    rows = torch.zeros(k, graph.n_atoms, 3)
    rows[:, 0, 0] = torch.tensor(norms)
    return graph._replace(hessian_rows=rows, row_index=torch.arange(k))


def test_uniform_row_sampling_is_uniform_and_keeps_rows_with_their_labels():
    graph = _graph_with_rows([1.0, 2.0, 3.0, 4.0])
    generator = torch.Generator().manual_seed(0)
    counts = np.zeros(4)
    for _ in range(4000):
        picked = select_rows(graph, 1, generator)
        counts[int(picked.row_index)] += 1
        assert float(picked.hessian_rows[0, 0, 0]) == float(picked.row_index) + 1
    assert np.abs(counts / 4000 - 0.25).max() < 0.03


def test_biased_sampler_follows_its_softmax_probabilities():
    norms = [0.5, 1.0, 2.0, 3.0]
    temperature = 1.0
    graph = _graph_with_rows(norms)
    expected = np.exp(np.array(norms) / temperature)
    expected /= expected.sum()
    generator = torch.Generator().manual_seed(1)
    n = 6000
    counts = np.bincount([int(select_rows(graph, 1, generator, temperature).row_index) for _ in range(n)], minlength=4)
    chi2 = (((counts - n * expected) ** 2) / (n * expected)).sum()
    assert chi2 < 16.27, (counts / n, expected)  # chi-square, 3 degrees of freedom, p = 0.001


def test_perturbed_copies_rattle_and_strain():
    base = rattled_cu(0, (2, 1, 1))
    copies = perturbed_copies([base], 3, seed=0)
    assert len(copies) == 3 and all(len(c) == len(base) for c in copies)
    assert all(not np.allclose(c.cell.array, base.cell.array) for c in copies)
    assert all(np.abs(c.get_scaled_positions() - base.get_scaled_positions()).max() > 1e-3 for c in copies)


def test_teacher_md_frames_are_spaced_and_distinct(morse_teacher):
    frames = teacher_md_frames(
        morse_teacher, rattled_cu(0, (2, 2, 2)), n_frames=3, temperature=300, interval=3, equilibration=2
    )
    assert len(frames) == 3
    assert np.abs(frames[1].positions - frames[0].positions).max() > 1e-3
    assert frames[0].calc is None  # plain structures: labels come from `ffdistill label`
