"""MLflow behind one package, the only code that imports mlflow: the run of a stage (run.py), the
store it goes to (store.py), the variants' MLflow Models, logged and registered (registry.py), and
the code MLflow stores with every logged model (model.py, loaded by file path, never imported here).
"""
from pipelines.errors import TrackingError
from pipelines.tracking.registry import CHAMPION, register_champion
from pipelines.tracking.run import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Run, flat_params
from pipelines.tracking.store import artifact_location, tracking_uri

__all__ = ["CHAMPION", "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "Run", "TrackingError", "artifact_location",
           "flat_params", "register_champion", "tracking_uri"]
