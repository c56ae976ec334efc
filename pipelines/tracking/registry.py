"""MLflow Models of the variants: logging one (MLflow's "models from code": the code is model.py
beside this file, the `pipelines` package goes in as code_paths, the weights as an artifact) and
registering the best one of a part under a name with the alias `champion`.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.errors import TrackingError

CHAMPION = "champion"

MODEL_CODE = Path(__file__).resolve().parent / "model.py"
PACKAGE = MODEL_CODE.parents[1]  # pipelines/, shipped with the model as its code_paths
# What the model's code imports; listed rather than inferred (inference loads the model in a
# subprocess, which costs more than the whole logging).
MODEL_REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "numpy", "pandas", "tqdm")


def _model_signature(example):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, *example.shape[1:]))])
    outputs = Schema([ColSpec("long", "label"), ColSpec("string", "class"), ColSpec("double", "probability")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_pyfunc(mlflow, weights: Path, example, options: dict, metadata: dict):
    from importlib.metadata import version

    return mlflow.pyfunc.log_model(
        name="model", python_model=str(MODEL_CODE), artifacts={"weights": str(weights)},
        code_paths=[str(PACKAGE)], model_config=options, metadata=metadata,
        signature=_model_signature(example), input_example=example,
        pip_requirements=[f"{p}=={version(p)}" for p in MODEL_REQUIREMENTS])


def register_champion(model_name: str, run_id: str, tags: dict) -> str:
    """Register the model of `run_id` under `model_name` (once: a run already registered there keeps
    its version) and point the alias `champion` at it. Returns the version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return _register(mlflow, model_name, run_id, tags)
    except MlflowException as e:
        raise TrackingError(f"registering {model_name} from run {run_id}: {str(e).splitlines()[0][:200]}") from None


def _register(mlflow, model_name: str, run_id: str, tags: dict) -> str:
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description=tags.get("description"))
    same = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if same:
        version = str(min(int(mv.version) for mv in same))
    else:
        # MLflow 3 keeps a logged model outside the run's artifacts: register the run's logged model.
        run = client.get_run(run_id)
        logged = client.search_logged_models([run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run_id}' AND name = 'model'")
        if not logged:
            raise TrackingError(f"run {run_id} has no logged model 'model' to register as {model_name}")
        version = str(mlflow.register_model(f"models:/{logged[0].model_id}", model_name).version)
    for k, v in tags.items():
        if k != "description":
            client.set_model_version_tag(model_name, version, k, str(v))
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return version
