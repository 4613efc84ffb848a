"""The code MLflow runs to load a logged adaptive-exit model ("models from code"): loading imports this file and
the model's own files, it unpickles nothing."""

import mlflow

from adaptive_exit.mlflow_model import EarlyExitPyfunc

mlflow.models.set_model(EarlyExitPyfunc())
