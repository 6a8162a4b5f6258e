"""The BERT encoder and its MLM head (`bert`), presets, loading megadna runs and exports (`pretrained`),
Hugging Face export (`export`), weights from elsewhere for a new run (`init_from`) and task heads (`heads`)."""

from megadna.model.bert import Bert, BertForMLM, ModelConfig
from megadna.model.shapes import PRESETS, is_shape_spec, model_config

__all__ = ["PRESETS", "Bert", "BertForMLM", "ModelConfig", "is_shape_spec", "model_config"]
