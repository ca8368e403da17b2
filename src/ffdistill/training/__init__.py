"""Training a student: the loss (``loss``) and the trainer (``trainer``)."""
