r"""
# Utilities

The pieces that sit around the model: the key-value cache for decoding (`cache.py`), LLM.int8 quantization
(`llm_int8.py`), and fine-tuning and training (`finetune.py`, `text_dataset.py`, `trainer.py`).
"""
