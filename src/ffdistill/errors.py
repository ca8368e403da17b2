"""Errors that the CLI turns into one clear line and a non-zero exit."""


class FFDistillError(Exception):
    """Base class: anything the user can fix by changing their input."""


class InputError(FFDistillError):
    """A structure file, structure or config the tool refuses."""


class TeacherError(FFDistillError):
    """A teacher that cannot be loaded, does not cover an element, or returned nonsense."""


class StoreError(FFDistillError):
    """A label store that is missing, corrupt, or does not match the command."""


class TrainingError(FFDistillError):
    """Training that cannot go on (a non-finite loss) or produced no student."""
