"""What the teacher labels and how it is read: structure files (``io``), teacher sampling (``sampling``), the
label store (``labels``), selection of frames (``select``) and the training datasets and splits (``frames``)."""
