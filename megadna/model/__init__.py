"""The BERT encoder and its MLM head (`bert`), presets, loading megadna runs and exports (`pretrained`),
Hugging Face export (`export`) and task heads (`heads`)."""

from megadna.model.bert import PRESETS, Bert, BertForMLM, ModelConfig, model_config

__all__ = ["PRESETS", "Bert", "BertForMLM", "ModelConfig", "model_config"]
