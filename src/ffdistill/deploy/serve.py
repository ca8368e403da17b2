"""The student as an i-PI client: an i-PI server (i-PI itself, ASE's ``SocketIOCalculator``, or any code
speaking the i-PI protocol) sends positions and cell, the student answers energy, forces and virial.

The protocol carries no atomic numbers: the client takes them, in the server's atom order, from a
template structure. Path-integral runs are served bead by bead by one client (or by several clients
on the same socket, which i-PI spreads beads over).
"""

from __future__ import annotations

import json

import ase
import numpy as np

from ffdistill.errors import InputError


def socket_client(
    unix: str | None = None, port: int | None = None, host: str = "localhost", timeout: float | None = None
):
    """An ASE ``SocketClient`` connected to the server at the unix socket ``unix`` or ``host:port``."""
    from ase.calculators.socketio import SocketClient

    if (unix is None) == (port is None):
        raise InputError("serve needs exactly one of a unix socket name (--unix) or a TCP port (--port)")
    try:
        return SocketClient(host=host, port=port, unixsocket=unix, timeout=timeout)
    except OSError as error:
        where = f"unix socket {unix}" if unix is not None else f"{host}:{port}"
        raise InputError(f"no i-PI server at {where} ({error.strerror or error})") from error


def serve(
    calc,
    template: ase.Atoms,
    unix: str | None = None,
    port: int | None = None,
    host: str = "localhost",
    use_stress: bool | None = None,
) -> int:
    """Answer the server's force requests with ``calc`` until it says EXIT; returns the number answered.

    ``template`` gives atomic numbers and periodicity; positions and cell come from the server. The
    virial (-stress × volume, from the calculator) is sent when the structure is periodic in all
    three directions and the calculator gives stress (direct-force students do not: zeros are sent). A
    committee's per-atom force deviation is sent in the protocol's extras (``_send_committee_extras``).
    """
    atoms = template.copy()
    atoms.calc = calc
    if use_stress is None:
        # a direct-force student's calculator declares no stress: its force head is no energy derivative
        use_stress = bool(np.all(atoms.pbc)) and "stress" in calc.implemented_properties
    client = socket_client(unix, port, host)
    _send_committee_extras(client, atoms)
    answered = 0
    for _ in client.irun(atoms, use_stress=use_stress):
        answered += 1
    return answered


def _send_committee_extras(client, atoms: ase.Atoms) -> None:
    """A committee's per-atom force deviation (eV/Å) rides in the protocol's extra bytes as JSON,
    ``{"force_deviation": [...]}``, which i-PI keeps as the step's ``extras`` (ASE's server as ``morebytes``)."""
    send = client.protocol.sendforce

    def sendforce(energy, forces, virial, morebytes=None):
        deviation = atoms.calc.results.get("force_deviation")
        if deviation is None:
            return send(energy, forces, virial) if morebytes is None else send(energy, forces, virial, morebytes)
        extras = json.dumps({"force_deviation": np.asarray(deviation).tolist()}).encode()
        return send(energy, forces, virial, np.frombuffer(extras, dtype=np.byte))

    client.protocol.sendforce = sendforce


def load_template(path: str | None, elements: list[int]) -> ase.Atoms:
    """The template structure: a file or named structure, checked against the student's elements."""
    from ffdistill.data.sampling import load_structure

    if path is None:
        raise InputError("serve needs --structure: the i-PI protocol sends positions, not elements")
    atoms = load_structure(path)
    unknown = sorted(set(atoms.numbers.tolist()) - set(elements))
    if unknown:
        raise InputError(f"the structure has atomic numbers {unknown} that the student does not know ({elements})")
    return atoms
