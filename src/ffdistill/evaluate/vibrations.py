"""Harmonic frequencies with rigid-body motion projected out of the mass-weighted Hessian.

Which motions are rigid depends on the periodicity: a 3D crystal or a slab can only translate
(3 modes); a wire can also rotate about its axis (3 + 1); an isolated molecule translates and
rotates (3 + 3, or 3 + 2 when linear). The Hessian is restricted to the orthogonal complement of
those motions, so exactly 3N - k internal modes remain and imaginary ones (saddle points, soft
modes) show as negative wavenumbers instead of being dropped with the zero modes.
"""

from __future__ import annotations

import ase
import numpy as np
from ase import units

#: Hessian eigenvalue (eV/Å²/amu) to wavenumber (cm⁻¹).
EV_AMU_A2_TO_CM1 = np.sqrt(units._e / units._amu) * 1e10 / (2 * np.pi * units._c * 100)
#: A mode below this (cm⁻¹, i.e. -IMAGINARY_CM1) counts as imaginary; numerical noise of a Hessian
#: by finite differences or float32 autograd stays well inside it.
IMAGINARY_CM1 = 10.0


def wavenumbers(eigenvalues: np.ndarray) -> np.ndarray:
    """Signed wavenumbers (cm⁻¹) of mass-weighted eigenvalues (eV/Å²/amu): imaginary as negative."""
    return np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * EV_AMU_A2_TO_CM1


def mass_weighted(hessian: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Symmetrised H_ij / sqrt(m_i m_j): a force head's -dF/dR is not symmetric; its symmetric part
    is the Hessian of the nearest conservative model."""
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(masses), 3)
    return 0.5 * (hessian + hessian.T) * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]


def frequencies_cm1(hessian: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """All 3N wavenumbers (cm⁻¹) with nothing projected (rigid-body modes included)."""
    return wavenumbers(np.linalg.eigvalsh(mass_weighted(hessian, masses)))


def rotation_axes(pbc) -> np.ndarray:
    """Axes about which the system may rotate rigidly: all three when isolated, the wire's axis
    when periodic along one direction, none otherwise."""
    periodic = np.flatnonzero(pbc)
    if len(periodic) == 0:
        return np.eye(3)
    if len(periodic) == 1:
        return np.eye(3)[periodic]
    return np.zeros((0, 3))


def rigid_body_basis(atoms: ase.Atoms) -> np.ndarray:
    """(3N, k) orthonormal rigid-body motions in mass-weighted coordinates; k is 3 (crystal, slab),
    4 (wire), 6 (molecule) or 5 (linear molecule, found from the rank)."""
    m = atoms.get_masses()
    sqrt_m = np.sqrt(m)[:, None]
    centred = atoms.positions - (m[:, None] * atoms.positions).sum(axis=0) / m.sum()
    motions = [(sqrt_m * axis).ravel() for axis in np.eye(3)]
    motions += [(sqrt_m * np.cross(axis, centred)).ravel() for axis in rotation_axes(atoms.pbc)]
    u, s, _ = np.linalg.svd(np.stack(motions, axis=1), full_matrices=False)
    return u[:, s > 1e-6 * s.max()]


def internal_basis(atoms: ase.Atoms) -> np.ndarray:
    """(3N, 3N - k) orthonormal complement of the rigid-body motions."""
    rigid = rigid_body_basis(atoms)
    q, _ = np.linalg.qr(np.concatenate([rigid, np.eye(3 * len(atoms))], axis=1))
    return q[:, rigid.shape[1] :]


def vibrational_frequencies(hessian: np.ndarray, atoms: ase.Atoms) -> np.ndarray:
    """The 3N - k internal wavenumbers (cm⁻¹, ascending, imaginary as negative)."""
    q = internal_basis(atoms)
    internal = q.T @ mass_weighted(hessian, atoms.get_masses()) @ q
    return wavenumbers(np.linalg.eigvalsh(0.5 * (internal + internal.T)))


def count_imaginary(frequencies: np.ndarray, threshold: float = IMAGINARY_CM1) -> int:
    return int(np.sum(np.asarray(frequencies) < -threshold))


def compare_spectra(freqs: np.ndarray, reference: np.ndarray) -> dict:
    """Mode-by-mode MAE (both sorted) and the imaginary-mode counts of a spectrum against the teacher's."""
    a, b = np.sort(freqs), np.sort(reference)
    return {
        "frequency_mae_cm1": float(np.abs(a - b).mean()),
        "imaginary_modes": count_imaginary(a),
        "imaginary_modes_teacher": count_imaginary(b),
    }
