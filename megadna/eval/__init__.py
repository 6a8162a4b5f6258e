"""Downstream evaluation on GUE-style CSV datasets: recipes and config, data, fine-tuning, reports."""
