"""Using a trained model on new cases: ``medvision predict`` (label-free cohorts, the card's recipe, MLflow)."""

from medvision.serving.models import model_recipe
from medvision.serving.predict import PredictionResult, label_free_spec, predict

__all__ = ["PredictionResult", "label_free_spec", "model_recipe", "predict"]
