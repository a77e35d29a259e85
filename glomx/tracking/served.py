"""Models-from-code entry point: MLflow runs this file to build the served glomx model.

Logging the model as code (rather than a cloudpickled object) keeps pickle out of the model
artifact; the glomx package itself travels alongside as ``code_paths``.
"""

from mlflow.models import set_model

from glomx.tracking.pyfunc import GlomxModel

set_model(GlomxModel())
