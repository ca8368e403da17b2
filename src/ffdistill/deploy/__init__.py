"""Where a student runs: MD (``simulate``), TorchScript export (``export``), LAMMPS (``lammps``), i-PI (``serve``)
and the dependency-free calculator (``standalone_calculator``)."""
