"""One module per DVC stage: the orchestration ``stages/<stage>.py`` runs (``train`` serves
every ``train@<family>`` stage); the libraries they orchestrate live in data, models,
evaluation and tracking."""
