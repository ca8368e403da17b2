"""Forces, stress and Hessian rows: the one place where derivatives of an energy are taken.

Teacher adapters, students, the loss, the calculator and the tests all call these functions, so a
sign or unit convention lives here and nowhere else.

Conventions (eV, Å)::

    F = -dE/dR                    (N, 3)        eV/Å
    sigma = (1/V) dE/d(strain)    (B, 3, 3)     eV/Å³   (ASE's sign: positive = tensile)
    H[r] = d2E / dR_r dR = -dF_r/dR   (N, 3)    eV/Å²   row r of the 3N x 3N Hessian, r = 3 * atom + axis
    H·v = -(dF/dR) v                  (N, 3)    eV/Å²   Hessian-vector product along a probe v (|v| = 1)

For a conservative model H is symmetric, so H·v is one VJP of the forces with v. For a direct-force model
the "Hessian" is the force Jacobian's negative, -dF/dR, which is not symmetric: its product with v is
taken on the column side (what finite differences of the forces along v give), by two VJPs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ffdistill.graph import AtomicGraph

if TYPE_CHECKING:
    from ffdistill.contract import Outputs

#: An energy model: graph -> (B,) total energies, differentiable in ``graph.R`` and ``graph.cell``.
EnergyFn = Callable[[AtomicGraph], Tensor]
#: A force model (no autograd graph, e.g. an ASE calculator): graph -> (N, 3) forces.
ForceFn = Callable[[AtomicGraph], Tensor]


class Predictions(NamedTuple):
    energy: Tensor  #: (B,)
    forces: Tensor  #: (N, 3)
    stress: Tensor | None  #: (B, 3, 3) or None
    positions: Tensor  #: (N, 3) the leaf the forces were taken against (for Hessian rows)


def predict(
    energy_fn: EnergyFn, graph: AtomicGraph, *, stress: bool = False, create_graph: bool = False
) -> Predictions:
    """Energy, forces and (optionally) stress by autograd of ``energy_fn``.

    With ``create_graph=True`` the forces stay differentiable: needed for training on forces and for
    Hessian rows.
    """
    R = graph.R.detach().requires_grad_(True)
    strain, used = _strained(graph._replace(R=R), stress)
    energy = energy_fn(used)
    inputs = [R] + ([strain] if stress else [])
    grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph, allow_unused=True)
    forces = -_zeros_if_none(grads[0], R)
    sigma = _virial_to_stress(grads[1], graph) if stress else None
    if not create_graph:
        energy, forces = energy.detach(), forces.detach()
        sigma = None if sigma is None else sigma.detach()
    return Predictions(energy, forces, sigma, R)


def evaluate(potential, graph: AtomicGraph, want) -> Outputs:
    """What ``want`` asks of ``potential`` on ``graph``: the body of every ``Potential.predict``.

    Energy models get forces, stress, rows and products by autograd; direct-force models get their
    force Jacobian's columns by two VJPs or forward differences; models without an autograd graph
    get rows and products by central differences of their forces.
    """
    from ffdistill.contract import Outputs, Want

    caps = potential.capabilities
    if not caps.autograd:
        return _evaluate_by_differences(potential, graph, want)
    stress = want.stress and caps.stress and not caps.direct
    second = want.hessian_rows or want.probe_products
    if not (want.differentiable or second or want.conservative_forces or (not caps.direct and (want.forces or stress))):
        with torch.no_grad():  # a force head alone, or energies alone: no autograd graph at all
            raw = potential.compute(graph, Want(features=want.features))
        return Outputs(raw.energy, raw.forces if want.forces else None, features=raw.features)
    R = graph.R.detach().requires_grad_(True)
    strain, used = _strained(graph._replace(R=R), stress)
    raw = potential.compute(used, Want(forces=False, features=want.features))
    keep = want.differentiable or second
    forces, sigma, consistent = raw.forces, None, None
    if not caps.direct and (want.forces or second or stress):
        inputs = [R] + ([strain] if stress else [])
        grads = torch.autograd.grad(raw.energy.sum(), inputs, create_graph=keep, allow_unused=True)
        forces = -_zeros_if_none(grads[0], R)
        sigma = _virial_to_stress(grads[1], graph) if stress else None
    if caps.direct and want.conservative_forces:
        (grad,) = torch.autograd.grad(raw.energy.sum(), R, create_graph=want.differentiable, retain_graph=True)
        consistent = -grad
    rows = probes = None
    if want.hessian_rows and _has(graph.row_index):
        vectors = one_hot_rows(graph.row_index, graph.n_atoms, forces)
        rows = _second(potential, graph, forces, R, vectors, graph.batch[graph.row_index // 3], want.differentiable)
    if want.probe_products and _has(graph.probe_vectors):
        probes = _second(potential, graph, forces, R, graph.probe_vectors, graph.probe_owner, want.differentiable)
    out = Outputs(raw.energy, forces if want.forces else None, rows, raw.features, consistent, probes, sigma)
    return out if want.differentiable else _detached(out)


def _has(x: Tensor | None) -> bool:
    return x is not None and len(x) > 0


def _strained(graph: AtomicGraph, stress: bool):
    """(strain leaf, graph) with a homogeneous strain applied to positions and cell; dE/d(strain) is the virial."""
    if not stress:
        return None, graph
    strain = torch.zeros_like(graph.cell, requires_grad=True)
    sym = 0.5 * (strain + strain.transpose(1, 2))
    R = graph.R + torch.einsum("ni,nij->nj", graph.R, sym[graph.batch])
    return strain, graph._replace(R=R, cell=graph.cell + torch.bmm(graph.cell, sym))


def _virial_to_stress(grad: Tensor | None, graph: AtomicGraph) -> Tensor:
    volume = torch.linalg.det(graph.cell).abs().clamp_min(1e-12)
    sigma = _zeros_if_none(grad, graph.cell) / volume[:, None, None]
    periodic = graph.pbc.all(dim=1)
    return torch.where(periodic[:, None, None], sigma, torch.full_like(sigma, float("nan")))


def _second(
    potential, graph: AtomicGraph, forces: Tensor, R: Tensor, vectors: Tensor, owner: Tensor, keep: bool
) -> Tensor:
    """-(dF/dR) v for each vector: the Hessian for energy models, the force-Jacobian column for direct ones."""
    caps = potential.capabilities
    if caps.second_derivatives == "forward-difference":
        return _forward_differences(potential, graph, forces, vectors, owner, keep)
    if not caps.direct:
        return hessian_vector_products(
            forces, R, vectors, owner, graph.batch, create_graph=keep, vectorize=potential.vectorize_rows
        )
    return force_jacobian_products(forces, R, vectors, owner, graph.batch, create_graph=keep)


def _forward_differences(
    potential, graph: AtomicGraph, forces: Tensor, vectors: Tensor, owner: Tensor, keep: bool
) -> Tensor:
    """-(F(R + h v) - F(R)) / h for every vector, one displaced copy of the whole batch per wave (vectors of
    different structures share a copy: structures do not interact). Differentiable in the parameters when
    ``keep``: the displaced forces are ordinary forces, so training pays one more force evaluation per wave
    instead of a double backward. Exact to O(h) in the step ``potential.fd_step``."""
    h = potential.fd_step
    waves = _waves(owner)
    packed = forces.new_zeros(int(waves.max()) + 1, *forces.shape).index_add(0, waves, vectors.to(forces.dtype))
    products = torch.stack(
        [-(_forces_of(potential, graph._replace(R=graph.R.detach() + h * p), keep) - forces) / h for p in packed]
    )
    return products[waves] * _owner_mask(owner, graph.batch, forces)


def _forces_of(potential, graph: AtomicGraph, keep: bool) -> Tensor:
    """Forces of ``potential`` on ``graph``: its force head, or -dE/dR (kept differentiable when ``keep``)."""
    from ffdistill.contract import Want

    if potential.capabilities.direct:
        return potential.compute(graph, Want()).forces
    R = graph.R.requires_grad_(True)
    energy = potential.compute(graph._replace(R=R), Want(forces=False)).energy
    (grad,) = torch.autograd.grad(energy.sum(), R, create_graph=keep)
    return -grad


def _evaluate_by_differences(potential, graph: AtomicGraph, want) -> Outputs:
    """Models without an autograd graph (ASE calculators): rows and products by central differences."""
    from ffdistill.contract import Outputs, Want

    raw = potential.compute(graph, Want(stress=want.stress, features=want.features))
    force_fn = lambda g: potential.compute(g, Want()).forces  # noqa: E731
    rows = probes = None
    if want.hessian_rows and _has(graph.row_index):
        rows = torch.zeros(len(graph.row_index), graph.n_atoms, 3, dtype=graph.R.dtype, device=graph.R.device)
        for b in range(graph.n_structures):
            picked = (graph.batch[graph.row_index // 3] == b).nonzero().squeeze(1)
            lo, hi = int(graph.ptr[b]), int(graph.ptr[b + 1])
            from ffdistill.graph import structure

            local = graph.row_index[picked] - 3 * lo
            rows[picked, lo:hi] = fd_hessian_rows(force_fn, structure(graph, b), local, h=potential.fd_step).to(rows)
    if want.probe_products and _has(graph.probe_vectors):
        probes = fd_hessian_vector_products(force_fn, graph, graph.probe_vectors.to(graph.R.dtype), h=potential.fd_step)
    sigma = raw.stress if want.stress else None
    return _detached(Outputs(raw.energy, raw.forces if want.forces else None, rows, raw.features, None, probes, sigma))


def _detached(out):
    return type(out)(*(x.detach() if isinstance(x, Tensor) else x for x in out))


def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def one_hot_rows(rows: Tensor, n_atoms: int, like: Tensor) -> Tensor:
    """(K, N, 3) one-hot vectors selecting flat coordinates ``rows``."""
    e = torch.zeros(len(rows), n_atoms * 3, dtype=like.dtype, device=like.device)
    e[torch.arange(len(rows), device=like.device), rows.to(like.device)] = 1.0
    return e.view(len(rows), n_atoms, 3)


def hessian_rows(
    forces: Tensor,
    positions: Tensor,
    rows: Tensor | Sequence[int],
    *,
    batch: Tensor | None = None,
    create_graph: bool = False,
    vectorize: bool = True,
) -> Tensor:
    """Rows ``H[rows]`` (K, N, 3) as vector-Jacobian products of the forces with one-hot vectors.

    ``forces`` must come from ``predict(..., create_graph=True)`` and ``positions`` is its leaf.
    All K products run in one vmapped call; if vmap is unsupported by the model or runs out of
    memory, rows are computed one by one (same result, slower).

    With ``batch`` (the graph's atom-to-structure index), rows of different structures share one
    product: structures do not interact, so the summed product splits exactly by atom. A batch with
    one row per structure then costs a single backward pass.
    """
    rows = torch.as_tensor(rows, dtype=torch.long, device=forces.device)
    if len(rows) == 0:
        return forces.new_zeros(0, *forces.shape)
    if batch is None:
        return _rows(forces, positions, one_hot_rows(rows, forces.shape[0], forces), create_graph, vectorize)
    vectors = one_hot_rows(rows, forces.shape[0], forces)
    return hessian_vector_products(
        forces, positions, vectors, batch[rows // 3], batch, create_graph=create_graph, vectorize=vectorize
    )


def hessian_vector_products(
    forces: Tensor,
    positions: Tensor,
    vectors: Tensor,
    owner: Tensor,
    batch: Tensor,
    *,
    create_graph: bool = False,
    vectorize: bool = True,
) -> Tensor:
    """``H·v`` (P, N, 3) for P vectors, each zero outside its own structure ``owner[p]``.

    Vectors of different structures are summed into one product (structures do not interact), so P
    vectors cost as many backward passes as the largest number of vectors on one structure.
    """
    if len(vectors) == 0:
        return forces.new_zeros(0, *forces.shape)
    waves = _waves(owner)
    packed = forces.new_zeros(int(waves.max()) + 1, *forces.shape).index_add(0, waves, vectors.to(forces.dtype))
    products = _rows(forces, positions, packed, create_graph, vectorize)
    return products[waves] * _owner_mask(owner, batch, forces)


def force_jacobian_columns(
    forces: Tensor, positions: Tensor, rows: Tensor | Sequence[int], batch: Tensor, *, create_graph: bool = False
) -> Tensor:
    """``-dF/dR_r`` (K, N, 3) for forces that need not be a gradient (direct-force heads).

    For a conservative model this equals ``hessian_rows``; for a force head the force Jacobian is
    not symmetric and this is the column (what finite differences of forces give), obtained as a
    Jacobian-vector product by two VJPs: J e = d/du <J^T u, e>. Rows of different structures share
    one product, as in ``hessian_rows``.
    """
    rows = torch.as_tensor(rows, dtype=torch.long, device=forces.device)
    vectors = one_hot_rows(rows, forces.shape[0], forces)
    return force_jacobian_products(forces, positions, vectors, batch[rows // 3], batch, create_graph=create_graph)


def force_jacobian_products(
    forces: Tensor, positions: Tensor, vectors: Tensor, owner: Tensor, batch: Tensor, *, create_graph: bool = False
) -> Tensor:
    """``-(dF/dR) v`` (P, N, 3) for forces that need not be a gradient, vectors packed as in
    ``hessian_vector_products``; each product by two VJPs (J v = d/du <J^T u, v>)."""
    if len(vectors) == 0:
        return forces.new_zeros(0, *forces.shape)
    u = torch.zeros_like(forces, requires_grad=True)
    (jt_u,) = torch.autograd.grad(forces, positions, grad_outputs=u, create_graph=True)
    waves = _waves(owner)
    packed = forces.new_zeros(int(waves.max()) + 1, *forces.shape).index_add(0, waves, vectors.to(forces.dtype))
    columns = []
    for v in packed:
        (column,) = torch.autograd.grad(jt_u, u, grad_outputs=v, retain_graph=True, create_graph=create_graph)
        columns.append(-column)
    return torch.stack(columns)[waves] * _owner_mask(owner, batch, forces)


def fd_force_jacobian_columns(
    force_fn: ForceFn, graph: AtomicGraph, rows: Tensor | Sequence[int], h: float = 1e-4
) -> Tensor:
    """``-dF/dR_r`` (K, N, 3) of a one-structure graph by forward differences, all K displaced copies
    and the undisplaced one evaluated in a single batched forward pass."""
    rows = torch.as_tensor(rows, dtype=torch.long, device=graph.R.device)
    return fd_force_jacobian_products(force_fn, graph, one_hot_rows(rows, graph.n_atoms, graph.R), h)


def fd_force_jacobian_products(force_fn: ForceFn, graph: AtomicGraph, vectors: Tensor, h: float = 1e-4) -> Tensor:
    """``-(dF/dR) v`` (P, N, 3) of a one-structure graph by forward differences along each v, all
    displaced copies and the undisplaced one in a single batched forward pass."""
    from ffdistill.graph import batch_graphs

    copies = [graph] + [graph._replace(R=graph.R + h * v.to(graph.R.dtype)) for v in vectors]
    forces = force_fn(batch_graphs(copies)).view(len(copies), graph.n_atoms, 3)
    return -(forces[1:] - forces[:1]) / h


def _owner_mask(owner: Tensor, batch: Tensor, like: Tensor) -> Tensor:
    """(K, N, 1): 1 on the atoms of the structure each vector belongs to, 0 elsewhere."""
    return (batch[None, :] == owner[:, None]).to(like.dtype)[:, :, None]


def _waves(owner: Tensor) -> Tensor:
    """Wave of each vector: its rank among the vectors of its own structure."""
    waves = torch.zeros_like(owner)
    for structure in owner.unique():
        members = (owner == structure).nonzero().squeeze(1)
        waves[members] = torch.arange(len(members), device=owner.device)
    return waves


def _rows(forces: Tensor, positions: Tensor, vectors: Tensor, create_graph: bool, vectorize: bool) -> Tensor:
    if vectorize and len(vectors) > 1:
        try:
            return _rows_vmapped(forces, positions, vectors, create_graph)
        except (RuntimeError, NotImplementedError) as error:
            # A genuine error recurs in the loop below and is raised from there.
            warnings.warn(
                f"vmapped Hessian rows failed ({str(error).splitlines()[0]}); computing row by row", stacklevel=2
            )
    return _rows_looped(forces, positions, vectors, create_graph)


def _rows_vmapped(forces: Tensor, positions: Tensor, vectors: Tensor, create_graph: bool) -> Tensor:
    (jac,) = torch.autograd.grad(
        forces, positions, grad_outputs=vectors, is_grads_batched=True, retain_graph=True, create_graph=create_graph
    )
    return -jac


def _rows_looped(forces: Tensor, positions: Tensor, vectors: Tensor, create_graph: bool) -> Tensor:
    out = []
    for v in vectors:
        (jac,) = torch.autograd.grad(forces, positions, grad_outputs=v, retain_graph=True, create_graph=create_graph)
        out.append(-jac)
    return torch.stack(out)


def full_hessian(potential, graph: AtomicGraph) -> Tensor:
    """The whole (3N, 3N) matrix ``-dF_i/dR_r`` (row i, column r) of a one-structure graph, from all 3N
    second-derivative outputs of ``potential.predict`` (for small systems, vibrations and tests): the
    Hessian of an energy model; the negative force Jacobian of a direct-force model (not symmetric)."""
    from ffdistill.contract import Want

    rows = torch.arange(3 * graph.n_atoms, device=graph.R.device)
    out = potential.predict(graph._replace(row_index=rows), Want(forces=False, hessian_rows=True))
    # item r is -dF/dR_r over all i: a column of the matrix
    return out.hessian_rows.reshape(3 * graph.n_atoms, 3 * graph.n_atoms).T


def fd_hessian_rows(force_fn: ForceFn, graph: AtomicGraph, rows: Tensor | Sequence[int], h: float = 1e-3) -> Tensor:
    """Rows ``H[rows]`` (K, N, 3) by central differences of forces: H[r] = -(F(R + h e_r) - F(R - h e_r)) / 2h.

    For teachers that give forces but no autograd graph. Uses the symmetry of H: the column
    obtained by displacing coordinate r equals row r. Costs 2 force calls per row.
    """
    out = []
    for r in torch.as_tensor(rows, dtype=torch.long).tolist():
        step = torch.zeros_like(graph.R).view(-1)
        step[r] = h
        step = step.view_as(graph.R)
        f_plus = force_fn(graph._replace(R=graph.R + step))
        f_minus = force_fn(graph._replace(R=graph.R - step))
        out.append(-(f_plus - f_minus) / (2 * h))
    return torch.stack(out) if out else graph.R.new_zeros(0, *graph.R.shape)


def fd_hessian_vector_products(force_fn: ForceFn, graph: AtomicGraph, vectors: Tensor, h: float = 1e-3) -> Tensor:
    """``H·v`` (P, N, 3) by central differences of forces along each v: -(F(R + h v) - F(R - h v)) / 2h."""
    out = [
        -(force_fn(graph._replace(R=graph.R + h * v)) - force_fn(graph._replace(R=graph.R - h * v))) / (2 * h)
        for v in vectors
    ]
    return torch.stack(out) if out else graph.R.new_zeros(0, *graph.R.shape)


def random_probes(n_atoms: int, k: int, seed: int, frame: int) -> np.ndarray:
    """K Gaussian (Hutchinson) probe directions for one frame, (K, N, 3), each scaled to unit norm so that
    a probe weighs in the loss like one one-hot row. Reproducible per (seed, frame)."""
    v = np.random.default_rng([seed, frame, 7]).standard_normal((k, n_atoms, 3))
    return v / np.linalg.norm(v.reshape(k, -1), axis=1)[:, None, None]


def fd_forces(energy_fn: EnergyFn, graph: AtomicGraph, h: float = 1e-4) -> Tensor:
    """Forces by central differences of the energy (a reference for tests)."""
    R = graph.R.detach().double()
    forces = torch.zeros_like(R)
    with torch.no_grad():
        for k in range(R.numel()):
            step = torch.zeros_like(R).view(-1)
            step[k] = h
            step = step.view_as(R)
            e_plus = energy_fn(graph._replace(R=(R + step).to(graph.R.dtype))).sum().double()
            e_minus = energy_fn(graph._replace(R=(R - step).to(graph.R.dtype))).sum().double()
            forces.view(-1)[k] = -(e_plus - e_minus) / (2 * h)
    return forces.to(graph.R.dtype)
