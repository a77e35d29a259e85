"""The names glomx gives things in MLflow, in one place: what a stage writes under one name is
what the registry, ``glomx predict`` and the tests read back under the same one."""

EXPERIMENT = "glomx"  # the one experiment every stage run goes to
REGISTERED_MODEL = "glomx"  # the one registered model every training run adds a version to
CHAMPION = "champion"  # alias of the model everyone uses
PREVIOUS = "previous"  # alias of the champion the last promotion replaced

STAGE_TAG = "glomx.stage"  # run tag: the DVC stage (marks a run as glomx's own)
HOST_TAG, PID_TAG = "glomx.host", "glomx.pid"  # run tags: the process that owns a run
NOTE_TAG = "mlflow.note.content"  # the run/experiment description the MLflow UI shows
DIGEST_TAG = "glomx.files_sha256"  # logged-model tag: the saved model folder's files digest
REASON_TAG = "promotion.reason"  # version tag: why promotion did what it did

ARTIFACT = "model"  # key of the saved model directory among the pyfunc's artifacts
CV_CONTEXT = "cv"  # dataset context under which training runs log the cross-validated store
CV_PREFIX = "cv_"  # version tags of the pooled out-of-fold metrics
